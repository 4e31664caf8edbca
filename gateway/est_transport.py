"""What an EST request's connection says about its client, from the WSGI environ.

The middleware (gateway.middleware, gateway.proxies) has resolved the scheme and the client address:
from the socket, or from the forwarding headers of a trusted proxy (`listen.trusted_proxies`). EST
is served only when the client's connection was HTTPS: on the HTTPS listener, or through a trusted
TLS-terminating proxy that says so (X-Forwarded-Proto: https, Forwarded: proto=https). Behind such
a proxy the client certificate comes from a header, believed only from a trusted proxy that says it
verified the certificate; from any other peer those headers are ignored (fail closed).
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography import x509
from werkzeug.datastructures import EnvironHeaders

from est.auth import certificate_from_proxy
from est.request import EstConnection
from est.views import ConnectionFacts
from gateway.config import GatewayConfig
from gateway.middleware import CLIENT_ADDRESS, CLIENT_CERT_DER, LISTENER, LOOP_LAG, TLS_UNIQUE, TLS_VERSION, VIA_PROXY
from shared_ca.errors import CAError

log = logging.getLogger("gateway.est")


def _environ_key(header: str) -> str:
    """Where the WSGI environ holds a request header (PEP 3333), as werkzeug's EnvironHeaders looks it up."""
    key = header.upper().replace("-", "_")
    return key if key in {"CONTENT_TYPE", "CONTENT_LENGTH"} else "HTTP_" + key


def est_connection_facts(config: GatewayConfig) -> ConnectionFacts:
    """The callable est.views asks for each request's EstConnection (None: do not serve EST here)."""
    trusted = config.trusted_proxies
    cert_header = config["est.proxy_cert_header"]
    cert_header_key = _environ_key(cert_header)
    verify_header = config["est.proxy_verify_header"]

    def facts(environ: dict[str, Any]) -> EstConnection | None:
        peer = environ.get("REMOTE_ADDR")
        proxied = bool(environ.get(VIA_PROXY))
        if environ.get(LISTENER) != "https":
            if proxied:
                log.info("EST request from trusted proxy %s without X-Forwarded-Proto: https: not served", peer)
            return None  # EST is served over TLS only (RFC 7030 §3.2.2)
        certificate: x509.Certificate | None = None
        source = "none"
        der = environ.get(CLIENT_CERT_DER)
        if der:
            certificate, source = x509.load_der_x509_certificate(der), "tls"
        elif proxied:
            headers = dict(EnvironHeaders(environ))
            try:
                certificate = certificate_from_proxy(peer or "", headers, trusted, cert_header, verify_header)
            except CAError as exc:  # fail closed: a garbled header authenticates nobody
                log.warning("ignored the client certificate header of proxy %s: %s", peer, exc.detail)
            if certificate is not None:
                source = "proxy"
        elif environ.get(cert_header_key):
            log.warning("ignored %s from %s, which is not a trusted proxy", cert_header, peer)
        return EstConnection(
            authorization=environ.get("HTTP_AUTHORIZATION"),
            client_certificate=certificate,
            certificate_source=source,
            client_address=environ.get(CLIENT_ADDRESS, peer),
            user_agent=environ.get("HTTP_USER_AGENT"),
            tls_version=environ.get(TLS_VERSION),
            # tls-unique binds only TLS 1.2 (RFC 9266 §3); through a proxy it would be the proxy's channel.
            tls_unique=environ.get(TLS_UNIQUE) if not proxied and environ.get(TLS_VERSION) == "TLSv1.2" else None,
            waited=float(environ.get(LOOP_LAG, 0.0)),
        )

    return facts
