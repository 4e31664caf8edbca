"""The admin API, on the HTTPS listener only: one-time SCEP challenges for MDMs.

- `POST /admin/api/scep/challenges` with `Authorization: Bearer <admin token>` and a JSON body
  answers 201 with a new one-time challenge as JSON.
- `GET /certsrv/mscep_admin/` with HTTP Basic (user = token name, password = token) answers the
  page NDES answers, which MDM connectors scrape for "The enrollment challenge password is: <B> … </B>".

On the plain-HTTP listener both paths are 404. Every refusal is logged with its cause; the client
gets a short message and nothing of the cause.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from gateway.admin_common import (
    BEARER_REALM,
    AdminRefusal,
    check_admin_token,
    https_only,
    refusal_response,
    unrouted_https_only,
)
from gateway.middleware import REQUEST_ID
from gateway.runtime import Gateway
from scep.challenges import ndes_style_secret, new_one_time_challenge
from shared_ca.authority import utcnow
from shared_ca.ca_material import parse_subject
from shared_ca.storage.admin import AdminTokenRecord

log = logging.getLogger("gateway.admin")
bp = Blueprint("admin", __name__)
bp.before_request(https_only)  # its paths do not exist on the plain-HTTP listener

BASIC_REALM = 'Basic realm="SCEP challenge"'
MIN_TTL = 60
MAX_TTL = 30 * 24 * 3600
DEFAULT_TTL = 3600
MAX_USES = 1000
NDES_TTL_MINUTES = 60
FIELDS = ("device_id", "profile", "ttl_seconds", "uses", "expected_subject")


@dataclass(frozen=True)
class AdminApi:
    """The admin API's state in a Flask app (`app.extensions["admin"]`)."""

    gateway: Callable[[], Gateway]  # the gateway open now; Unavailable while it cannot be opened


def init_app(app: Flask, gateway: Callable[[], Gateway]) -> None:
    """Serve the admin API from `app`, over the gateway `gateway()` returns."""
    app.extensions["admin"] = AdminApi(gateway)
    app.before_request(unrouted_https_only)  # acts only on requests routing did not match
    app.register_blueprint(bp)


def _gateway() -> Gateway:
    admin_api: AdminApi = current_app.extensions["admin"]
    return admin_api.gateway()


@bp.errorhandler(AdminRefusal)
def _refused(exc: AdminRefusal) -> Response:
    return refusal_response(exc, log)


def _bearer_unauthorized(detail: str, *, invalid_token: bool = False) -> AdminRefusal:
    challenge = f'{BEARER_REALM}, error="invalid_token"' if invalid_token else BEARER_REALM
    return AdminRefusal(401, "unauthorized", detail=detail, headers={"WWW-Authenticate": challenge})


def _bearer_token() -> AdminTokenRecord:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header:
        raise _bearer_unauthorized("no Authorization header")
    if scheme.lower() != "bearer" or not token:
        raise _bearer_unauthorized(f"Authorization scheme {scheme[:20]!r} is not Bearer with a token")
    return check_admin_token(
        _gateway(), token, unauthorized=lambda detail: _bearer_unauthorized(detail, invalid_token=True)
    )


def _bad(field: str, message: str) -> AdminRefusal:
    return AdminRefusal(400, f"{field}: {message}")


def _integer(body: dict[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise _bad(field, f"must be from {low} to {high}, not {value}")
    return value


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise _bad(field, "must be a string")
    return value


def _profile_name(requested: str | None) -> str:
    gw = _gateway()
    name = requested if requested is not None else str(gw.config["default_profile"])
    if name not in gw.config.profiles:
        raise AdminRefusal(404, f"no profile {name!r}", detail=f"unknown profile {name!r}")
    if not gw.config.profiles[name].served_over("scep"):
        # A challenge opens its profile over SCEP: none is made for a profile SCEP does not serve.
        raise AdminRefusal(403, f"profile {name!r} is not served over SCEP")
    return name


def _unicode_text(document: object) -> bool:
    """Whether every string (key or value) in a decoded JSON document is encodable Unicode (walked
    without recursion: the document may be nested as deep as the decoder allowed)."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return True


def _json_body() -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdminRefusal(400, "the body must be a JSON object", detail=f"body is not JSON: {exc}") from None
    except RecursionError:  # "[[[[…" nested deeper than the decoder's recursion limit
        raise AdminRefusal(400, "the body must be a JSON object", detail="body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        detail = f"body is JSON {type(body).__name__}, not an object"
        raise AdminRefusal(400, "the body must be a JSON object", detail=detail)
    if not _unicode_text(body):
        # json.loads turns "\ud800" escapes into lone surrogates, which no database or log can encode.
        detail = "body has a lone surrogate escape"
        raise AdminRefusal(400, "the body must be a JSON object of Unicode text", detail=detail)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    return body


@bp.post("/admin/api/scep/challenges")
def create_challenge() -> Response:
    """A new one-time SCEP challenge for an MDM, as JSON."""
    token = _bearer_token()
    body = _json_body()
    device_id = body.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise _bad("device_id", "is required: the device identity (the CSR's CN) the challenge is for")
    if len(device_id) > 255 or not device_id.isprintable():
        raise _bad("device_id", "must be at most 255 printable characters")
    profile = _optional_text(body, "profile")
    ttl = _integer(body, "ttl_seconds", DEFAULT_TTL, MIN_TTL, MAX_TTL)
    uses = _integer(body, "uses", 1, 1, MAX_USES)
    expected = _optional_text(body, "expected_subject")
    if expected is not None:
        try:
            expected = parse_subject(expected).rfc4514_string()  # the form the CSR subject is compared in
        except ValueError as exc:
            raise _bad("expected_subject", str(exc)) from None
    profile_name = _profile_name(profile)
    now = utcnow()
    secret = new_one_time_challenge(
        _gateway().storage.enrollments,
        device_id,
        profile_name,
        dt.timedelta(seconds=ttl),
        uses,
        expected,
        created_by=f"admin-token:{token.name}",
        now=now,
    )
    log.info(
        "admin token %r created a one-time challenge for device %r (profile %s, %d use(s), %d s)",
        token.name,
        device_id,
        profile_name,
        uses,
        ttl,
        extra={"request_id": request.environ.get(REQUEST_ID)},
    )
    expires = (now + dt.timedelta(seconds=ttl)).replace(microsecond=0)
    response = jsonify(
        challenge=secret,
        device_id=device_id,
        profile=profile_name,
        expires_at=expires.isoformat().replace("+00:00", "Z"),
        uses=uses,
        expected_subject=expected,
    )
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


# -- NDES-compatible challenge page ---------------------------------------------------------------

NDES_PAGE = """<HTML><Head><Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-16">\
<Title>Network Device Enrollment Service</Title></Head><Body BgColor=#FFFFFF><Font ID=locPageFont Face="Arial">
<Table Border=0 CellSpacing=0 CellPadding=4 Width=100% BgColor=#008080>
<TR><TD><Font Color=#FFFFFF><Font Face="Arial" Size=-1><B>SCEP-to-EST gateway</B></Font></Font></TD></TR>
</Table>
<P ID=locPageTitle> <B> Network Device Enrollment Service</B>
<P> Network Device Enrollment Service allows you to obtain certificates for routers or other network devices \
using the Simple Certificate Enrollment Protocol (SCEP).
<P> To complete certificate enrollment for your network device you will need the following information:
<P> The thumbprint (hash value) for the CA certificate is: <B> {thumbprint} </B>
<P> The enrollment challenge password is: <B> {challenge} </B>
<P> This password can be used only once and will expire within {minutes} minutes.
<P> Each enrollment requires a new challenge password. You can refresh this web page to obtain a new \
challenge password.
<P></Font></Body></Html>
"""


def _basic_unauthorized(detail: str) -> AdminRefusal:
    return AdminRefusal(401, "unauthorized", detail=detail, headers={"WWW-Authenticate": BASIC_REALM})


def _basic_token() -> AdminTokenRecord:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise _basic_unauthorized("no HTTP Basic credentials")
    if not auth.password:
        raise _basic_unauthorized(f"HTTP Basic credentials of {auth.username!r} without a password")
    return check_admin_token(
        _gateway(), auth.password, unauthorized=_basic_unauthorized, expected_name=auth.username or ""
    )


@bp.get("/certsrv/mscep_admin/")
@bp.get("/certsrv/mscep_admin")
def ndes_admin() -> Response:
    """NDES's mscep_admin page: a new one-time challenge (any device, 60 minutes, one use)."""
    token = _basic_token()
    profile_name = _profile_name(request.args.get("profile"))
    gw = _gateway()
    secret = new_one_time_challenge(
        gw.storage.enrollments,
        None,
        profile_name,
        dt.timedelta(minutes=NDES_TTL_MINUTES),
        created_by=f"admin-token:{token.name}",
        now=utcnow(),
        secret=ndes_style_secret(),
    )
    log.info(
        "admin token %r fetched an NDES challenge (profile %s)",
        token.name,
        profile_name,
        extra={"request_id": request.environ.get(REQUEST_ID)},
    )
    thumbprint = gw.authority.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - display only
    page = NDES_PAGE.format(thumbprint=thumbprint, challenge=secret, minutes=NDES_TTL_MINUTES)
    # NDES answers in UTF-16 (little-endian, with a byte-order mark); connectors decode it as such.
    body = b"\xff\xfe" + page.replace("\n", "\r\n").encode("utf-16-le")
    response = Response(body, status=200, content_type="text/html; charset=utf-16")
    response.headers["Cache-Control"] = "no-store"
    return response
