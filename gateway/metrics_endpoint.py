"""`GET /metrics` on both listeners, and the request metrics of the app.

Who may read it: a client whose address is in `metrics.allowed_addresses` (default loopback), or one
that presents an admin token (`Authorization: Bearer`, an enabled token with the admin scope) over
HTTPS. The address is the client's as gateway.middleware resolved it: the socket's peer, or what a
trusted proxy (`listen.trusted_proxies`) forwarded, so a reverse proxy on the same host does not make
every client a loopback client, provided it is listed there. A token is never accepted over plain
HTTP, where anyone on the path could read it: from an address not allowed, a request over HTTP is
refused whatever it carries.

Refusals: 403 (address not allowed and no token, or a token over HTTP), 401 with a Bearer challenge
(unknown or disabled token), one line of text; the cause goes to the log. While the database is away a
token cannot be checked (503), but an allowed address still gets its scrape, with gateway_database_up 0.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, request

from est.auth import ProxyNetwork, parse_trusted_proxies, peer_is_trusted
from gateway.admin_common import BEARER_REALM, AdminRefusal, check_admin_token, refusal_response
from gateway.metrics import Scrape, exposition, process_metrics
from gateway.metrics_requests import EST_OPERATIONS, SCEP_OPERATIONS, UNROUTED, RequestMetrics, note_route
from gateway.metrics_state import GatewayState
from gateway.middleware import CLIENT_ADDRESS, LISTENER
from gateway.runtime import GatewayLoader

log = logging.getLogger("gateway.metrics")
bp = Blueprint("metrics", __name__)
ANSWERED_WITHOUT_GATEWAY = frozenset({"metrics.scrape"})
"""The endpoint the app answers while the gateway cannot be opened (gateway.app)."""
_ADMIN_BLUEPRINTS = frozenset({"admin", "dashboard"})
_REFUSAL_HEADERS = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class MetricsEndpoint:
    """The endpoint's state in a Flask app (`app.extensions["metrics"]`)."""

    loader: GatewayLoader
    allowed: tuple[ProxyNetwork, ...]  # metrics.allowed_addresses
    state: GatewayState


def init_app(app: Flask, loader: GatewayLoader) -> None:
    """Serve /metrics from `app`, count and time its requests, and note the route of each."""
    config = loader.config
    allowed = parse_trusted_proxies(str(config["metrics.allowed_addresses"]))
    app.extensions["metrics"] = MetricsEndpoint(loader, allowed, GatewayState(loader))
    app.register_blueprint(bp)
    app.teardown_request(_note_route)
    app.wsgi_app = RequestMetrics(app.wsgi_app, config.profiles)  # type: ignore[method-assign]


def route_labels(blueprint: str | None, endpoint: str | None, operation: str | None) -> tuple[str, str]:
    """(protocol, operation) of the route that answered; `operation` is the SCEP query parameter or the
    EST path segment. Values outside their known sets are 'other'."""
    if endpoint is None:
        return "other", UNROUTED
    name = endpoint.rsplit(".", 1)[-1]
    if blueprint == "scep":
        return "scep", operation if operation in SCEP_OPERATIONS else "other"
    if blueprint == "est":
        return "est", operation if operation in EST_OPERATIONS else "other"
    if blueprint in _ADMIN_BLUEPRINTS:
        return "admin", name
    if endpoint.startswith("ca.ocsp"):
        return "ocsp", "ocsp"
    if endpoint.startswith("ca.crl"):
        return "crl", "crl"
    return "other", name


def _note_route(_error: BaseException | None) -> None:
    if request.blueprint == "scep":
        operation = request.args.get("operation")
    else:
        operation = (request.view_args or {}).get("operation")
    note_route(*route_labels(request.blueprint, request.endpoint, operation))


def _endpoint() -> MetricsEndpoint:
    found: MetricsEndpoint = current_app.extensions["metrics"]
    return found


def address_allowed(address: str | None, allowed: Collection[ProxyNetwork]) -> bool:
    """Whether a client address (IPv4-mapped IPv6 as IPv4) is in one of the allowed networks."""
    return peer_is_trusted(address, tuple(allowed))


def _unauthorized(detail: str) -> AdminRefusal:
    challenge = f'{BEARER_REALM}, error="invalid_token"'
    return AdminRefusal(401, "unauthorized", detail=detail, headers={"WWW-Authenticate": challenge})


def authorize(endpoint: MetricsEndpoint) -> str:
    """Who may read: 'address <a>' or 'admin token <name>'; AdminRefusal otherwise (module docstring)."""
    address = request.environ.get(CLIENT_ADDRESS)
    if address_allowed(address, endpoint.allowed):
        return f"address {address}"
    header = request.headers.get("Authorization")
    if not header:
        raise AdminRefusal(
            403, "forbidden", detail=f"client {address} is not in metrics.allowed_addresses and sent no admin token"
        )
    if request.environ.get(LISTENER) != "https":
        raise AdminRefusal(
            403,
            "forbidden",
            detail=f"client {address} is not in metrics.allowed_addresses and sent an Authorization header over "
            "plain HTTP (admin tokens are accepted over HTTPS only; treat a token sent this way as exposed)",
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(f"Authorization scheme {scheme[:20]!r} is not Bearer with a token")
    record = check_admin_token(endpoint.loader.get(), token, unauthorized=_unauthorized)
    return f"admin token {record.name!r}"


@bp.errorhandler(AdminRefusal)
def _refused(exc: AdminRefusal) -> Response:
    return refusal_response(exc, log, _REFUSAL_HEADERS)


@bp.get("/metrics")
def scrape() -> Response:
    """The metrics of every worker of this node's run, and the node's state (gateway.metrics_state)."""
    endpoint = _endpoint()
    who = authorize(endpoint)
    log.debug("metrics scraped by %s", who)
    body, content_type = exposition(Scrape(process_metrics(), endpoint.state), request.headers.get("Accept", ""))
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
