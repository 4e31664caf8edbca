"""gateway/est_transport.py: what an EST request's connection says about its client."""

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
from gateway.est_transport import client_address, est_connection_facts
from gateway.middleware import CLIENT_CERT_DER, LISTENER, TLS_UNIQUE, TLS_VERSION
from tests.support import ec_key, subject

TRUSTED = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        pytest.param("127.0.0.1", None, "127.0.0.1", id="no-header"),
        pytest.param("127.0.0.1", "192.0.2.10", "192.0.2.10", id="one-hop"),
        pytest.param("127.0.0.1", "203.0.113.99, 192.0.2.10", "192.0.2.10", id="client-forged-left-entry"),
        pytest.param("127.0.0.1", "192.0.2.10, 10.1.1.1", "192.0.2.10", id="two-trusted-hops"),
        pytest.param("127.0.0.1", "garbage", "127.0.0.1", id="garbage-entry"),
        pytest.param("::ffff:127.0.0.1", "192.0.2.10", "192.0.2.10", id="ipv4-mapped-peer"),
        pytest.param("192.0.2.50", "203.0.113.99", "192.0.2.50", id="untrusted-peer"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert client_address(peer, forwarded, TRUSTED) == expected


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
    environ = {"GATEWAY_EST_TRUSTED_PROXIES": proxies}
    if cert_header is not None:
        environ["GATEWAY_EST_PROXY_CERT_HEADER"] = cert_header
    return est_connection_facts(load_config(tmp_path, environ=environ))


def test_plain_http_is_served_only_to_a_trusted_proxy(tmp_path: Path) -> None:
    facts = _facts(tmp_path)
    assert facts({"REMOTE_ADDR": "192.0.2.1", LISTENER: "http"}) is None
    assert facts({"REMOTE_ADDR": "127.0.0.1", LISTENER: "http"}) is not None
    assert facts({"REMOTE_ADDR": "::ffff:127.0.0.1", LISTENER: "http"}) is not None


def test_tls_facts_are_taken_on_the_https_listener(tmp_path: Path) -> None:
    cert = _cert()
    connection = _facts(tmp_path, "")(
        {
            "REMOTE_ADDR": "192.0.2.1",
            LISTENER: "https",
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
    environ = {"REMOTE_ADDR": "192.0.2.1", LISTENER: "https", TLS_VERSION: "TLSv1.3", TLS_UNIQUE: b"x"}
    assert _facts(tmp_path, "")(environ).tls_unique is None


def test_proxy_certificate_header(tmp_path: Path) -> None:
    cert = _cert()
    header = quote(cert.public_bytes(Encoding.PEM).decode())
    base = {LISTENER: "https", "HTTP_X_SSL_CLIENT_CERT": header, "HTTP_X_FORWARDED_FOR": "192.0.2.10"}
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
    environ = {LISTENER: "https", "REMOTE_ADDR": "192.0.2.1", environ_key: header, "HTTP_X_FORWARDED_FOR": "192.0.2.7"}
    with caplog.at_level(logging.WARNING, logger="gateway.est"):
        connection = _facts(tmp_path, proxies, cert_header)({**environ, "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS"})
    assert connection.client_certificate is None and connection.certificate_source == "none"
    assert connection.client_address == "192.0.2.1"
    assert f"ignored {cert_header or 'X-SSL-Client-Cert'} from 192.0.2.1, which is not a trusted proxy" in caplog.text
