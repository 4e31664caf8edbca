"""The migration dashboard and its JSON API, on the HTTPS listener only (404 on plain HTTP).

- `GET /admin/migration`: the page (gateway.dashboard_page). It holds no data, so it loads without
  a credential; its script fetches everything below with the user's credential.
- `GET /admin/api/migration/summary`: the migration report's numbers as JSON (render.report_to_dict,
  with the device lists left to the next endpoint).
- `GET /admin/api/devices?state=legacy&group=G&silent=true&after=ID&limit=N`: devices in id order,
  one page at a time (keyset pagination: pass `next_after` back as `after`).
- `GET /admin/api/openapi.json`: the OpenAPI 3.1 description of the admin API.

The API accepts an admin token (`Authorization: Bearer`, as POST /admin/api/scep/challenges does)
or, with no Authorization header, a TLS client certificate whose SHA-256 fingerprint is listed in
the `admin.client_cert_fingerprints` setting and which is neither expired nor revoked. A token is
never taken from the URL (it would land in logs, history and Referer headers). Every refusal is
one line of text; its cause goes to the log only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from gateway.admin_common import BEARER_REALM, AdminRefusal, check_admin_token, https_only, refusal_response
from gateway.dashboard_openapi import openapi_document
from gateway.dashboard_page import CONTENT_SECURITY_POLICY, PAGE
from gateway.middleware import CLIENT_CERT_DER, REQUEST_ID
from gateway.runtime import Gateway
from migration_tools.report import (
    DEFAULT_TREND_DAYS,
    MAX_TREND_DAYS,
    ReportSettings,
    TrendCache,
    build_report,
    device_page,
)
from migration_tools.report_json import device_to_dict, report_to_dict
from shared_ca.authority import fingerprint, utcnow
from shared_ca.errors import PolicyDenied
from shared_ca.storage.device_contacts import MAX_GROUP
from shared_ca.storage.schema import DEVICE_STATES
from shared_ca.trust import recognise

log = logging.getLogger("gateway.dashboard")
bp = Blueprint("dashboard", __name__)
bp.before_request(https_only)  # its paths do not exist on the plain-HTTP listener

CLIENT_CERT_SETTING = "admin.client_cert_fingerprints"
DEFAULT_PAGE = 100
MAX_PAGE = 1000
DEVICE_PARAMETERS = ("state", "group", "silent", "after", "limit")
SUMMARY_PARAMETERS = ("group", "days")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# A refusal's text may echo a query parameter's name.
_REFUSAL_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's state in a Flask app (`app.extensions["dashboard"]`)."""

    gateway: Callable[[], Gateway]  # the gateway open now; Unavailable while it cannot be opened
    # The summary's trend, a minute at most behind (TrendCache); totals and lists are live.
    trend: TrendCache = field(default_factory=TrendCache)


def init_app(app: Flask, gateway: Callable[[], Gateway]) -> None:
    """Serve the dashboard and its JSON API from `app`, over the gateway `gateway()` returns."""
    app.extensions["dashboard"] = Dashboard(gateway)
    app.register_blueprint(bp)


def _dashboard() -> Dashboard:
    found: Dashboard = current_app.extensions["dashboard"]
    return found


def _gateway() -> Gateway:
    return _dashboard().gateway()


@bp.errorhandler(AdminRefusal)
def _refused(exc: AdminRefusal) -> Response:
    return refusal_response(exc, log, _REFUSAL_HEADERS)


# -- authentication -----------------------------------------------------------------------------------


def pinned_fingerprints(setting: object) -> frozenset[str]:
    """The admin client-certificate fingerprints of the setting (comma- or space-separated text, or a
    list), as lower-case hex without colons; malformed entries are logged and ignored."""
    items: list[object] = []
    if isinstance(setting, str):
        items = list(re.split(r"[\s,]+", setting))
    elif isinstance(setting, list | tuple | set | frozenset):
        items = list(setting)
    found = set()
    for item in items:
        text = str(item).replace(":", "").strip().lower()
        if _SHA256_HEX.fullmatch(text):
            found.add(text)
        elif text:
            log.warning("%s: ignored %r, which is not a SHA-256 fingerprint in hex", CLIENT_CERT_SETTING, str(item))
    return frozenset(found)


def _unauthorized(detail: str, *, invalid_token: bool = False) -> AdminRefusal:
    challenge = f'{BEARER_REALM}, error="invalid_token"' if invalid_token else BEARER_REALM
    return AdminRefusal(401, "unauthorized", detail=detail, headers={"WWW-Authenticate": challenge})


def _token_admin(header: str) -> str:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(f"Authorization scheme {scheme[:20]!r} is not Bearer with a token")
    record = check_admin_token(_gateway(), token, unauthorized=lambda detail: _unauthorized(detail, invalid_token=True))
    return f"admin-token:{record.name}"


def _certificate_admin(der: bytes) -> str | None:
    """`client-cert:<fingerprint>` for a pinned, valid admin certificate; None for any other certificate."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    digest = fingerprint(certificate)
    if digest not in pinned_fingerprints(_gateway().config.values.get(CLIENT_CERT_SETTING, "")):
        return None
    now = utcnow()
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        detail = f"certificate {digest} outside validity"
        raise AdminRefusal(403, "the admin client certificate is not valid now", detail=detail)
    try:
        recognise(_gateway().storage, certificate, now)  # one we issued or imported: not revoked either
    except PolicyDenied as exc:
        text = f"the admin client certificate is refused: {exc.public_message}"
        raise AdminRefusal(403, text, detail=exc.detail) from None
    return f"client-cert:{digest[:16]}"


def authenticate() -> str:
    """Who is asking (for the log); AdminRefusal 401/403 otherwise."""
    header = request.headers.get("Authorization")
    if header:
        return _token_admin(header)
    der = request.environ.get(CLIENT_CERT_DER)
    if der:
        who = _certificate_admin(der)
        if who is not None:
            return who
        raise _unauthorized("the client certificate is not an admin certificate, and no Authorization header")
    raise _unauthorized("no Authorization header and no admin client certificate")


# -- parameters ---------------------------------------------------------------------------------------


def _bad(name: str, message: str) -> AdminRefusal:
    return AdminRefusal(400, f"{name}: {message}")


def _parameters(known: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(request.args) - set(known))
    if unknown:
        raise _bad(unknown[0][:40], f"unknown query parameter (known: {', '.join(known)})")
    repeated = [name for name in request.args if len(request.args.getlist(name)) > 1]
    if repeated:
        raise _bad(repeated[0], "given more than once")
    return dict(request.args.items())


def _integer(args: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise _bad(name, f"must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise _bad(name, f"must be from {low} to {high}, not {value}")
    return value


def _group(args: dict[str, str]) -> str | None:
    group = args.get("group")
    if group is not None and not 1 <= len(group) <= MAX_GROUP:
        raise _bad("group", f"a group name has 1-{MAX_GROUP} characters")
    return group


def _states(args: dict[str, str]) -> tuple[str, ...]:
    states = tuple(dict.fromkeys(s.strip() for s in args.get("state", "").split(",") if s.strip()))
    unknown = [s for s in states if s not in DEVICE_STATES]
    if unknown:
        raise _bad("state", f"unknown device state {unknown[0][:40]!r} (known: {', '.join(DEVICE_STATES)})")
    return states


def _flag(args: dict[str, str], name: str) -> bool:
    text = args.get(name, "false").lower()
    if text not in _TRUE + _FALSE:
        raise _bad(name, "must be true or false")
    return text in _TRUE


def _json(body: object) -> Response:
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _silent_days() -> int:
    return int(_gateway().config.values.get("migration.silent_days", 14))


# -- endpoints ----------------------------------------------------------------------------------------


@bp.get("/admin/migration")
def page() -> Response:
    """The dashboard page (no data in it: see the module docstring)."""
    response = Response(PAGE, mimetype="text/html")
    response.headers.update(
        {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        }
    )
    return response


@bp.get("/admin/api/migration/summary")
def summary() -> Response:
    """The report's numbers: totals, groups, the counts of devices to move and silent, the trend."""
    who = authenticate()
    args = _parameters(SUMMARY_PARAMETERS)
    group = _group(args)
    days = _integer(args, "days", DEFAULT_TREND_DAYS, 1, MAX_TREND_DAYS)
    settings = ReportSettings(silent_days=_silent_days(), trend_days=days, list_limit=0)
    store = _gateway().storage.migration_report
    report = build_report(store, utcnow(), group=group, settings=settings, trend=_dashboard().trend)
    log.info("%s read the migration summary", who, extra={"request_id": request.environ.get(REQUEST_ID)})
    return _json(report_to_dict(report))


@bp.get("/admin/api/devices")
def devices() -> Response:
    """One page of devices, in id order, with their client fingerprint and next actions."""
    authenticate()
    args = _parameters(DEVICE_PARAMETERS)
    limit = _integer(args, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    result = device_page(
        _gateway().storage.migration_report,
        utcnow(),
        states=_states(args),
        group=_group(args),
        silent_days=_silent_days(),
        silent_only=_flag(args, "silent"),
        after_id=_integer(args, "after", 0, 0, 2**63 - 1),
        limit=limit,
    )
    return _json(
        {"devices": [device_to_dict(d) for d in result.devices], "next_after": result.next_after, "limit": limit}
    )


@bp.get("/admin/api/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of the admin API (public: it describes, it holds no data)."""
    return _json(openapi_document())
