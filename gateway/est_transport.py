"""What an EST request's connection says about its client, from the WSGI environ.

The TLS facts come from GatewayMiddleware (client certificate, tls-unique, TLS version). Behind a
TLS-terminating reverse proxy, the client certificate and address come from headers, believed
only when the peer is in `est.trusted_proxies` and the proxy says it verified the certificate;
from any other peer those headers are ignored (fail closed).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from werkzeug.datastructures import EnvironHeaders

from est.auth import ProxyNetwork, certificate_from_proxy, parse_trusted_proxies, peer_is_trusted
from est.service import EstConnection
from est.views import ConnectionFacts
from gateway.config import GatewayConfig
from gateway.middleware import CLIENT_CERT_DER, LISTENER, TLS_UNIQUE, TLS_VERSION
from shared_ca.errors import CAError

log = logging.getLogger("gateway.est")


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[ProxyNetwork]) -> str | None:
    """The client behind a chain of trusted proxies: the rightmost X-Forwarded-For entry that is not a
    trusted proxy. Entries further left were written by the client itself and prove nothing."""
    address = peer
    for entry in reversed((forwarded_for or "").split(",")):
        if not peer_is_trusted(address, trusted):
            break
        try:
            ipaddress.ip_address(entry.strip())
        except ValueError:
            break
        address = entry.strip()
    return address


def _environ_key(header: str) -> str:
    """Where the WSGI environ holds a request header (PEP 3333), as werkzeug's EnvironHeaders looks it up."""
    key = header.upper().replace("-", "_")
    return key if key in {"CONTENT_TYPE", "CONTENT_LENGTH"} else "HTTP_" + key


def est_connection_facts(config: GatewayConfig) -> ConnectionFacts:
    """The callable est.views asks for each request's EstConnection (None: do not serve EST here)."""
    trusted = parse_trusted_proxies(config["est.trusted_proxies"])
    cert_header = config["est.proxy_cert_header"]
    cert_header_key = _environ_key(cert_header)
    verify_header = config["est.proxy_verify_header"]

    def facts(environ: dict[str, Any]) -> EstConnection | None:
        peer = environ.get("REMOTE_ADDR")
        proxied = peer_is_trusted(peer, trusted)
        if environ.get(LISTENER) != "https" and not proxied:
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
        address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), trusted) if proxied else peer
        return EstConnection(
            authorization=environ.get("HTTP_AUTHORIZATION"),
            client_certificate=certificate,
            certificate_source=source,
            client_address=address,
            user_agent=environ.get("HTTP_USER_AGENT"),
            tls_version=environ.get(TLS_VERSION),
            # tls-unique binds only TLS 1.2 (RFC 9266 §3); through a proxy it would be the proxy's channel.
            tls_unique=environ.get(TLS_UNIQUE) if not proxied and environ.get(TLS_VERSION) == "TLSv1.2" else None,
        )

    return facts
