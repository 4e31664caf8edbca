"""gateway/proxies.py and the middleware's transport facts: who the client is and whether it used HTTPS.

The rules: the socket decides, unless its peer is a trusted proxy; then the forwarding chain is
walked from the right while the hop that wrote an entry is trusted, and the first untrusted entry is
the client. HTTPS only when every statement of the trusted chain says so.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from est.auth import parse_trusted_proxies
from gateway.config import load_config
from gateway.middleware import CLIENT_ADDRESS, LISTENER, VIA_PROXY, transport_facts
from gateway.proxies import MAX_HOPS, normalise_address, parse_forwarded, resolve
from gateway.server import ListenerApplication

TRUSTED = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8, 2001:db8:ffff::/48")


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        pytest.param("192.0.2.1", "192.0.2.1", id="ipv4"),
        pytest.param(" 192.0.2.1 ", "192.0.2.1", id="ipv4-spaces"),
        pytest.param("192.0.2.1:8080", "192.0.2.1", id="ipv4-port"),
        pytest.param("192.0.2.1:_p1", "192.0.2.1", id="ipv4-obfuscated-port"),
        pytest.param("2001:DB8::1", "2001:db8::1", id="ipv6-canonical"),
        pytest.param("2001:db8:0:0:0:0:0:1", "2001:db8::1", id="ipv6-long-form"),
        pytest.param("[2001:db8::1]", "2001:db8::1", id="ipv6-brackets"),
        pytest.param("[2001:db8::1]:443", "2001:db8::1", id="ipv6-brackets-port"),
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="ipv4-mapped"),
        pytest.param("[::ffff:192.0.2.1]:80", "192.0.2.1", id="ipv4-mapped-brackets"),
        pytest.param("unknown", None, id="fail/unknown"),
        pytest.param("_hidden", None, id="fail/obfuscated"),
        pytest.param("", None, id="fail/empty"),
        pytest.param(None, None, id="fail/none"),
        pytest.param("192.0.2.300", None, id="fail/bad-octet"),
        pytest.param("192.0.2.1:http", None, id="fail/port-not-a-number"),
        pytest.param("192.0.2.1:8080:1", None, id="fail/two-ports"),
        pytest.param("[192.0.2.1]", None, id="fail/ipv4-in-brackets"),
        pytest.param("[2001:db8::1", None, id="fail/open-bracket"),
        pytest.param("[2001:db8::1]x", None, id="fail/after-bracket"),
        pytest.param("proxy.example", None, id="fail/host-name"),
        pytest.param("1" * 200, None, id="fail/too-long"),
        pytest.param("<script>", None, id="fail/markup"),
    ],
)
def test_normalise_address(node: str | None, expected: str | None) -> None:
    assert normalise_address(node) == expected


def test_parse_forwarded() -> None:
    assert parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"') == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8:cafe::17]:4711"},
    ]
    assert parse_forwarded('for="_gazonk";proto=https') == [{"for": "_gazonk", "proto": "https"}]
    assert parse_forwarded('for="a\\"b,c";proto=https , ;, proto=http') == [
        {"for": 'a"b,c', "proto": "https"},
        {"proto": "http"},
    ]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('for="192.0.2.1', id="open-quote"),
        pytest.param("for", id="pair-without-equals"),
        pytest.param("for=192.0.2.1;for=192.0.2.2", id="repeated-parameter"),
        pytest.param("for=[2001:db8::1]", id="brackets-unquoted"),
        pytest.param("fo r=192.0.2.1", id="space-in-name"),
        pytest.param("for=192.0.2.1:80", id="port-unquoted"),
    ],
)
def test_parse_forwarded_refuses_malformed_headers(value: str) -> None:
    assert parse_forwarded(value) is None


def headers(**values: str) -> dict[str, str]:
    names = {
        "xff": "HTTP_X_FORWARDED_FOR",
        "xfp": "HTTP_X_FORWARDED_PROTO",
        "ssl": "HTTP_X_FORWARDED_SSL",
        "fwd": "HTTP_FORWARDED",
        "peer": "REMOTE_ADDR",
    }
    return {names[key]: value for key, value in values.items()}


@pytest.mark.parametrize(
    ("environ", "socket_scheme", "scheme", "client"),
    [
        # An untrusted peer: every forwarding header is ignored, whatever it says.
        pytest.param(
            headers(peer="192.0.2.50", xff="203.0.113.99", xfp="https", ssl="on", fwd="for=1.2.3.4;proto=https"),
            "http",
            "http",
            "192.0.2.50",
            id="untrusted-peer-forges-everything",
        ),
        pytest.param(headers(peer="192.0.2.50", xfp="http"), "https", "https", "192.0.2.50", id="untrusted-on-tls"),
        pytest.param(headers(peer="::ffff:192.0.2.50"), "http", "http", "192.0.2.50", id="mapped-untrusted-peer"),
        # A trusted peer: X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Ssl.
        pytest.param(headers(peer="127.0.0.1"), "http", "http", "127.0.0.1", id="trusted-says-nothing"),
        pytest.param(headers(peer="127.0.0.1", xff="192.0.2.10"), "http", "http", "192.0.2.10", id="one-hop"),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10", xfp="https"), "http", "https", "192.0.2.10", id="one-hop-https"
        ),
        pytest.param(headers(peer="127.0.0.1", xfp="https"), "http", "https", "127.0.0.1", id="proto-only"),
        pytest.param(headers(peer="127.0.0.1", ssl="on"), "http", "https", "127.0.0.1", id="ssl-on"),
        pytest.param(headers(peer="127.0.0.1", ssl="off"), "https", "http", "127.0.0.1", id="ssl-off-downgrades"),
        pytest.param(
            headers(peer="127.0.0.1", xff="203.0.113.99, 192.0.2.10"),
            "http",
            "http",
            "192.0.2.10",
            id="client-forged-left-entry",
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10, 10.1.1.1"), "http", "http", "192.0.2.10", id="two-trusted-hops"
        ),
        pytest.param(headers(peer="127.0.0.1", xff="10.2.2.2, 10.1.1.1"), "http", "http", "10.2.2.2", id="all-trusted"),
        pytest.param(
            headers(peer="::ffff:127.0.0.1", xff="192.0.2.10"), "http", "http", "192.0.2.10", id="mapped-peer"
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="::ffff:192.0.2.10"), "http", "http", "192.0.2.10", id="mapped-entry"
        ),
        pytest.param(headers(peer="127.0.0.1", xff="2001:db8::7"), "http", "http", "2001:db8::7", id="ipv6-entry"),
        pytest.param(
            headers(peer="127.0.0.1", xff="[2001:DB8::7]:50000"), "http", "http", "2001:db8::7", id="ipv6-port"
        ),
        pytest.param(headers(peer="2001:db8:ffff::1", xff="192.0.2.10"), "http", "http", "192.0.2.10", id="ipv6-proxy"),
        pytest.param(headers(peer="127.0.0.1", xff="garbage"), "http", "http", None, id="garbage-entry"),
        pytest.param(headers(peer="127.0.0.1", xff="unknown"), "http", "http", None, id="unknown-entry"),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10, garbage, 10.1.1.1"),
            "http",
            "http",
            None,
            id="garbage-behind-a-trusted-hop",
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.66, 192.0.2.10", xfp="https, http"),
            "http",
            "http",
            "192.0.2.10",
            id="forged-https-left-of-the-proxy-http",
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10, 10.1.1.1", xfp="https, http"),
            "http",
            "https",
            "192.0.2.10",
            id="proto-aligned-with-the-client-hop",
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10, 10.1.1.1", xfp="https"),
            "http",
            "https",
            "192.0.2.10",
            id="shorter-proto-list-rightmost",
        ),
        pytest.param(
            headers(peer="127.0.0.1", xff="192.0.2.10", xfp="https", ssl="off"),
            "http",
            "http",
            "192.0.2.10",
            id="statements-disagree",
        ),
        pytest.param(headers(peer="127.0.0.1", xfp="HTTPS "), "http", "https", "127.0.0.1", id="proto-case"),
        pytest.param(headers(peer="127.0.0.1", xfp="ftp"), "https", "http", "127.0.0.1", id="proto-garbage"),
        pytest.param(headers(peer="127.0.0.1", xfp="http"), "https", "http", "127.0.0.1", id="proxy-says-http"),
        # A trusted peer: Forwarded (RFC 7239).
        pytest.param(headers(peer="127.0.0.1", fwd="proto=https"), "http", "https", "127.0.0.1", id="fwd-proto-only"),
        pytest.param(
            headers(peer="127.0.0.1", fwd='for="[2001:db8:cafe::17]:4711";proto=https'),
            "http",
            "https",
            "2001:db8:cafe::17",
            id="fwd-quoted-ipv6-port",
        ),
        pytest.param(
            headers(peer="127.0.0.1", fwd='for="192.0.2.43:_p";proto=https'),
            "http",
            "https",
            "192.0.2.43",
            id="fwd-obfuscated-port",
        ),
        pytest.param(
            headers(peer="127.0.0.1", fwd="for=192.0.2.66;proto=https, for=192.0.2.60;proto=http"),
            "http",
            "http",
            "192.0.2.60",
            id="fwd-forged-left-element",
        ),
        pytest.param(
            headers(peer="127.0.0.1", fwd="for=192.0.2.60;proto=https, for=10.1.1.1;proto=http"),
            "http",
            "https",
            "192.0.2.60",
            id="fwd-two-hops-proto-of-the-client-hop",
        ),
        pytest.param(headers(peer="127.0.0.1", fwd="for=_hidden;proto=https"), "http", "https", None, id="fwd-hidden"),
        pytest.param(headers(peer="127.0.0.1", fwd="for=unknown"), "http", "http", None, id="fwd-unknown"),
        pytest.param(headers(peer="127.0.0.1", fwd='for="192.0.2.1'), "https", "http", None, id="fwd-malformed"),
        pytest.param(
            headers(peer="127.0.0.1", fwd="for=192.0.2.10;proto=https", xff="192.0.2.10", xfp="https"),
            "http",
            "https",
            "192.0.2.10",
            id="both-agree",
        ),
        pytest.param(
            headers(peer="127.0.0.1", fwd="for=198.51.100.1;proto=https", xff="192.0.2.10"),
            "http",
            "https",
            None,
            id="both-disagree-client-unknown",
        ),
    ],
)
def test_resolve(environ: dict[str, str], socket_scheme: str, scheme: str, client: str | None) -> None:
    transport = resolve(environ, socket_scheme, TRUSTED)
    assert (transport.scheme, transport.client_address) == (scheme, client)
    assert transport.via_proxy is (normalise_address(environ["REMOTE_ADDR"]) in ("127.0.0.1", "2001:db8:ffff::1"))


def test_nobody_is_trusted_without_trusted_proxies() -> None:
    forged = headers(peer="127.0.0.1", xff="192.0.2.10", xfp="https", ssl="on", fwd="for=192.0.2.10;proto=https")
    transport = resolve(forged, "http", ())
    assert (transport.scheme, transport.client_address, transport.via_proxy) == ("http", "127.0.0.1", False)


def test_a_chain_longer_than_any_real_one_is_not_believed() -> None:
    chain = ", ".join(["192.0.2.10"] + ["10.0.0.1"] * MAX_HOPS)
    assert resolve(headers(peer="127.0.0.1", xff=chain), "http", TRUSTED).client_address is None
    chain = ", ".join(["192.0.2.10"] + ["10.0.0.1"] * (MAX_HOPS - 1))
    assert resolve(headers(peer="127.0.0.1", xff=chain), "http", TRUSTED).client_address == "192.0.2.10"


def test_disagreeing_headers_are_noted() -> None:
    both = headers(peer="127.0.0.1", fwd="for=198.51.100.1", xff="192.0.2.10")
    note = resolve(both, "http", TRUSTED).note
    assert note is not None and "198.51.100.1" in note and "192.0.2.10" in note


# -- the middleware ---------------------------------------------------------------------------------


def test_a_plain_gunicorn_socket_is_http_whatever_wsgi_url_scheme_says(caplog: pytest.LogCaptureFixture) -> None:
    """gunicorn sets wsgi.url_scheme from X-Forwarded-Proto by default: the socket decides instead."""
    with socket.socket() as plain:
        environ: dict[str, Any] = {
            "gunicorn.socket": plain,
            "wsgi.url_scheme": "https",
            **headers(peer="192.0.2.50", xfp="https", xff="192.0.2.99"),
        }
        transport_facts(environ, ())
    assert (environ[LISTENER], environ[CLIENT_ADDRESS], environ[VIA_PROXY]) == ("http", "192.0.2.50", False)
    assert environ["wsgi.url_scheme"] == "http"


def test_without_a_gunicorn_socket_wsgi_url_scheme_is_the_socket() -> None:
    environ: dict[str, Any] = {"wsgi.url_scheme": "https", "REMOTE_ADDR": "192.0.2.50"}
    transport_facts(environ, TRUSTED)
    assert (environ[LISTENER], environ[CLIENT_ADDRESS]) == ("https", "192.0.2.50")


def test_the_middleware_logs_disbelieved_headers(caplog: pytest.LogCaptureFixture) -> None:
    environ: dict[str, Any] = {"wsgi.url_scheme": "http", **headers(peer="127.0.0.1", fwd="for=x", xff="192.0.2.1")}
    with caplog.at_level(logging.WARNING, logger="gateway.proxies"):
        transport_facts(environ, TRUSTED)
    assert environ[CLIENT_ADDRESS] is None
    assert "forwarding headers of trusted proxy 127.0.0.1 partly ignored" in caplog.text


# -- configuration ----------------------------------------------------------------------------------


def test_listen_trusted_proxies_and_its_deprecated_alias(tmp_path: Path) -> None:
    assert load_config(tmp_path, environ={}).trusted_proxies == ()
    assert load_config(tmp_path, environ={}).deprecations == ()
    new = load_config(tmp_path, environ={"GATEWAY_LISTEN_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert [str(n) for n in new.trusted_proxies] == ["10.0.0.0/8", "::1/128"] and new.deprecations == ()
    old = load_config(tmp_path, environ={"GATEWAY_EST_TRUSTED_PROXIES": "192.0.2.1"})
    assert [str(n) for n in old.trusted_proxies] == ["192.0.2.1/32"]
    assert len(old.deprecations) == 1 and "rename it listen.trusted_proxies" in old.deprecations[0]
    both = load_config(
        tmp_path, environ={"GATEWAY_EST_TRUSTED_PROXIES": "192.0.2.1", "GATEWAY_LISTEN_TRUSTED_PROXIES": "192.0.2.2"}
    )
    assert [str(n) for n in both.trusted_proxies] == ["192.0.2.2/32"]
    assert both.deprecations == ("est.trusted_proxies is deprecated and ignored: listen.trusted_proxies is set",)


def test_listen_trusted_proxies_names_a_bad_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"listen\.trusted_proxies .*'proxy\.example' is not an IP address"):
        load_config(tmp_path, environ={"GATEWAY_LISTEN_TRUSTED_PROXIES": "10.0.0.1, proxy.example"})


def test_gunicorn_trusts_no_forwarding_header(tmp_path: Path) -> None:
    """gunicorn's own defaults believe X-Forwarded-Proto from 127.0.0.1; each listener turns that off."""
    config = load_config(tmp_path, environ={"GATEWAY_LISTEN_TRUSTED_PROXIES": "127.0.0.1"})
    cfg = ListenerApplication("http", config).cfg
    assert (cfg.forwarded_allow_ips, cfg.secure_scheme_headers, cfg.forwarder_headers) == ([], {}, [])
    assert cfg.proxy_allow_ips == [] and cfg.proxy_protocol == "off"
