"""gateway/est_transport.py: what an EST request's connection says about its client.

Each environ goes through the middleware's transport facts first (gateway.middleware.transport_facts),
as in the application: the scheme and the client address are resolved there, once.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from est.auth import parse_trusted_proxies
from gateway.config import load_config
from gateway.est_transport import est_connection_facts
from gateway.middleware import CLIENT_CERT_DER, TLS_UNIQUE, TLS_VERSION, transport_facts
from tests.support import ec_key, subject


def _cert() -> x509.Certificate:
    key = ec_key()
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject("proxied"))
        .issuer_name(subject("proxied"))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _facts(tmp_path: Path, proxies: str = "127.0.0.1", cert_header: str | None = None) -> Any:
    """The EST facts callable of a configuration, fed environs the way the middleware leaves them."""
    settings = {"GATEWAY_LISTEN_TRUSTED_PROXIES": proxies}
    if cert_header is not None:
        settings["GATEWAY_EST_PROXY_CERT_HEADER"] = cert_header
    facts = est_connection_facts(load_config(tmp_path, environ=settings))
    trusted = parse_trusted_proxies(proxies)

    def through_middleware(environ: dict[str, Any]) -> Any:
        environ = {"wsgi.url_scheme": "https", **environ}
        transport_facts(environ, trusted)
        return facts(environ)

    return through_middleware


def test_plain_http_is_served_only_when_a_trusted_proxy_says_https(tmp_path: Path) -> None:
    facts = _facts(tmp_path)
    http = {"wsgi.url_scheme": "http"}
    assert facts({**http, "REMOTE_ADDR": "192.0.2.1"}) is None
    assert facts({**http, "REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_PROTO": "https"}) is None  # not trusted
    assert facts({**http, "REMOTE_ADDR": "127.0.0.1"}) is None  # a trusted proxy that does not say https
    assert facts({**http, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "http"}) is None
    assert facts({**http, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https"}) is not None
    assert facts({**http, "REMOTE_ADDR": "::ffff:127.0.0.1", "HTTP_FORWARDED": "proto=https"}) is not None
    assert facts({**http, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_SSL": "on"}) is not None


def test_the_deprecated_est_trusted_proxies_still_trusts(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"GATEWAY_EST_TRUSTED_PROXIES": "127.0.0.1"})
    environ: dict[str, Any] = {
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_FORWARDED_FOR": "192.0.2.10",
    }
    transport_facts(environ, config.trusted_proxies)
    connection = est_connection_facts(config)(environ)
    assert connection is not None and connection.client_address == "192.0.2.10"


def test_tls_facts_are_taken_on_the_https_listener(tmp_path: Path) -> None:
    cert = _cert()
    connection = _facts(tmp_path, "")(
        {
            "REMOTE_ADDR": "192.0.2.1",
            CLIENT_CERT_DER: cert.public_bytes(Encoding.DER),
            TLS_VERSION: "TLSv1.2",
            TLS_UNIQUE: b"binding",
            "HTTP_AUTHORIZATION": "Basic eDp5",
            "HTTP_USER_AGENT": "libest 3.2",
        }
    )
    assert connection.client_certificate == cert and connection.certificate_source == "tls"
    assert (connection.tls_unique, connection.authorization, connection.user_agent) == (
        b"binding",
        "Basic eDp5",
        "libest 3.2",
    )


def test_tls_unique_is_withheld_under_tls_13(tmp_path: Path) -> None:
    environ = {"REMOTE_ADDR": "192.0.2.1", TLS_VERSION: "TLSv1.3", TLS_UNIQUE: b"x"}
    assert _facts(tmp_path, "")(environ).tls_unique is None


def test_proxy_certificate_header(tmp_path: Path) -> None:
    cert = _cert()
    header = quote(cert.public_bytes(Encoding.PEM).decode())
    base = {"HTTP_X_SSL_CLIENT_CERT": header, "HTTP_X_FORWARDED_FOR": "192.0.2.10"}
    trusted = _facts(tmp_path)({**base, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS"})
    assert trusted.client_certificate == cert and trusted.certificate_source == "proxy"
    assert trusted.client_address == "192.0.2.10" and trusted.tls_unique is None
    failed = _facts(tmp_path)({**base, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_SSL_CLIENT_VERIFY": "FAILED:expired"})
    assert failed.client_certificate is None
    untrusted = _facts(tmp_path)({**base, "REMOTE_ADDR": "192.0.2.1", "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS"})
    assert untrusted.client_certificate is None and untrusted.client_address == "192.0.2.1"
    garbled = _facts(tmp_path)(
        {**base, "REMOTE_ADDR": "127.0.0.1", "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS", "HTTP_X_SSL_CLIENT_CERT": "%%%"}
    )
    assert garbled.client_certificate is None  # fail closed: nobody is authenticated by garbage


@pytest.mark.parametrize(
    ("cert_header", "environ_key"),
    [
        pytest.param(None, "HTTP_X_SSL_CLIENT_CERT", id="default-header"),
        pytest.param("ssl-client-cert", "HTTP_SSL_CLIENT_CERT", id="lower-case-custom-header"),
    ],
)
@pytest.mark.parametrize("proxies", ["", "10.0.0.0/8"], ids=["no-proxies", "other-proxies"])
def test_a_certificate_header_from_an_untrusted_peer_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cert_header: str | None, environ_key: str, proxies: str
) -> None:
    header = quote(_cert().public_bytes(Encoding.PEM).decode())
    environ = {"REMOTE_ADDR": "192.0.2.1", environ_key: header, "HTTP_X_FORWARDED_FOR": "192.0.2.7"}
    with caplog.at_level(logging.WARNING, logger="gateway.est"):
        connection = _facts(tmp_path, proxies, cert_header)({**environ, "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS"})
    assert connection.client_certificate is None and connection.certificate_source == "none"
    assert connection.client_address == "192.0.2.1"
    assert f"ignored {cert_header or 'X-SSL-Client-Cert'} from 192.0.2.1, which is not a trusted proxy" in caplog.text
