"""SCEP with a webhook challenge whose service is down: HTTP 503, never a signed FAILURE.

A SCEP client takes a signed FAILURE as final, and the gateway stores it for retransmissions; an
outage of the service that decides (nothing listening, HTTP 500, no answer in time) is the
gateway's fault, so the answer is HTTP 503 and nothing is stored. The proof: once the service is
back, the very same pkiMessage is answered with a certificate. The webhook is a real HTTP server on
127.0.0.1, stopped, answering 500, or too slow, in turn.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from flask import Flask

from gateway.app import create_app
from gateway.config import load_config
from scep.asn1 import PkiStatus
from tests.support import issued_count
from tests.test_scep_service import device_key, enrollment, get_ca, issued_cert, post, reply_of

WEBHOOK_SECRET = "webhook-hmac-key"
TIMEOUT_SECONDS = 1  # the smallest timeout a profile accepts
SLOW_SECONDS = 10.0  # how long the "slow" webhook would take (the test releases it sooner)


class _QuietServer(ThreadingHTTPServer):
    """A webhook whose answer comes after the gateway gave up writes to a closed connection: not an error."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        del request, client_address


class Webhook:
    """A webhook service on 127.0.0.1 whose behaviour the test sets: allow, fail (HTTP 500) or slow;
    `stop` closes its port and `start` opens the same port again."""

    def __init__(self) -> None:
        self.mode = "allow"
        self.calls = 0
        self.release = threading.Event()  # ends a slow answer early
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/verdict"

    def start(self) -> None:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                webhook.calls += 1
                if webhook.mode == "slow":
                    webhook.release.wait(SLOW_SECONDS)
                if webhook.mode == "fail":
                    self.send_error(500)
                    return
                body = json.dumps({"allow": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(10)
            self._server = None
            self.release.clear()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """The webhook service, running and allowing."""
    service = Webhook()
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def webhook_app(data_dir: Path, webhook: Webhook) -> Iterator[Flask]:
    """The gateway with a profile `hooked` whose only challenge check is the webhook."""
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(
            "\n[profiles.hooked]\n"
            f'scep_webhook_url = "{webhook.url}"\n'
            f'scep_webhook_secret = "{WEBHOOK_SECRET}"\n'
            f"scep_webhook_timeout_seconds = {TIMEOUT_SECONDS}\n"
        )
    application = create_app(load_config(data_dir, environ={}))
    yield application
    application.extensions["gateway"].get().storage.engine.dispose()


@pytest.mark.parametrize("outage", ["stopped", "http-500", "timeout"])
def test_a_webhook_outage_is_503_and_the_same_message_succeeds_once_it_is_back(
    webhook_app: Flask, webhook: Webhook, outage: str
) -> None:
    client = webhook_app.test_client()
    ra = get_ca(client)
    engine = webhook_app.extensions["gateway"].get().storage.engine
    sent = enrollment(ra, f"hooked-{outage}", key=device_key(), challenge="whatever-the-mdm-sent")
    if outage == "stopped":
        webhook.stop()
    else:
        webhook.mode = "fail" if outage == "http-500" else "slow"
    before = issued_count(engine)

    for _attempt in range(2):  # a retry during the outage is not answered from a stored FAILURE either
        down = post(client, sent.der, "/scep/hooked")
        assert down.status_code == 503, down.data
        assert down.mimetype == "text/plain"
        assert b"webhook" not in down.data and b"127.0.0.1" not in down.data  # the cause is for the log
    assert issued_count(engine) == before

    if outage == "stopped":
        webhook.start()  # the same port again
    webhook.release.set()  # a slow answer still pending ends now
    webhook.mode = "allow"
    calls = webhook.calls
    reply = reply_of(post(client, sent.der, "/scep/hooked"), ra, sent)
    assert reply.status is PkiStatus.SUCCESS, (reply.fail_info, reply.fail_info_text)
    issued_cert(reply, sent.key)
    assert webhook.calls == calls + 1  # decided by the webhook now, not by anything stored
    assert issued_count(engine) == before + 1
