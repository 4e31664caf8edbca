"""Forged log lines through the real server: `gateway serve` in both log formats, sent EST requests whose
subject, path, label, user name and User-Agent carry line breaks and terminal escapes.

A header cannot carry a raw newline or ESC (gunicorn refuses control characters in field values with
a 400), so the User-Agent carries their 8-bit forms: NEL (U+0085, a line break for str.splitlines and
many viewers) and CSI (U+009B, the 8-bit ANSI escape). The path and the EST label carry `%0a` and
`%1b`, which arrive decoded in PATH_INFO; the CSR's subject carries them raw.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import CONTINUATION
from tests.support import csr_pem, ec_key, make_csr, subject
from tests.test_serve import (
    REPO,
    Server,
    child_env,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    stop_server,
    tls_context,
    wait_ready,
)

pytestmark = pytest.mark.slow

CN = "dev\nINJECTED log line \x1b[31m"
USER_AGENT = "gw-test\x85INJECTED agent \x9b31m"
USER = "ghost\nINJECTED user\x1b[2J"
LABEL_PATH = "/.well-known/est/x%0aINJECTED%20label%1b[31m/simpleenroll"
LABEL_SHOWN = {"text": "x\\nINJECTED label\\x1b[31m", "json": "x\nINJECTED label\x1b[31m"}
_RAW_BREAKS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # what no line may carry but \t \n
_TEXT_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] [A-Z]+ [\w.]+: ")


def spawn(data_dir: Path, workdir: Path, log_format: str) -> Server:
    """`gateway serve --log-format LOG_FORMAT` on fresh ports, in a process group of its own."""
    http_port, https_port = free_ports(2)
    stdout, stderr = workdir / f"serve-{log_format}.out", workdir / f"serve-{log_format}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--data-dir",
                str(data_dir),
                "--http",
                f"127.0.0.1:{http_port}",
                "--https",
                f"127.0.0.1:{https_port}",
                "--workers",
                "1",
                "--log-format",
                log_format,
            ],
            cwd=REPO,
            env=child_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return Server(data_dir, http_port, https_port, process, stdout, stderr)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("logs-serve") / "data"
    init_data_dir(directory, free_ports(1)[0])
    return directory


@pytest.fixture(scope="module")
def est_user(data_dir: Path) -> tuple[str, str]:
    """An EST user with a generated secret, so that the CSR is read and its subject judged."""
    done = gateway_command("est-user", "add", "log-probe", "--generate", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return "log-probe", done.stdout.strip()


@pytest.fixture(params=["text", "json"])
def server(request: pytest.FixtureRequest, data_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    log_format: str = request.param
    running = spawn(data_dir, tmp_path, log_format)
    try:
        wait_ready(running)
        yield running, log_format
    finally:
        assert stop_server(running) == 0, running.stderr_text()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _wait_for(server: Server, request_ids: list[str], seconds: float = 5.0) -> str:
    """The server's stderr once it holds the access line of every request."""
    deadline = time.monotonic() + seconds
    while True:
        text = server.stderr_text()
        # The access line ("... rid=ID"), written last: other records of the request name its id too.
        if all(f"rid={request_id}" in text for request_id in request_ids) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _malformed_request(port: int) -> bytes:
    """A request head gunicorn refuses itself (a control character in a header name): its 400's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n")
        return sock.recv(64)


def _every_line_is_json_through_shutdown(running: Server) -> None:
    """Stop the server; then every line it wrote on stdout and stderr, from the banner to the last
    shutdown line, is one JSON object."""
    assert stop_server(running) == 0, running.stderr_text()
    stdout, stderr = running.stdout.read_text(), running.stderr_text()
    records = {}
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        assert text.endswith("\n"), text
        lines = text.split("\n")[:-1]
        assert all(line.startswith("{") for line in lines), text
        records[stream] = [json.loads(line) for line in lines]
        assert all({"time", "level", "logger", "pid", "message"} <= set(r) for r in records[stream]), text
    banner = records["stdout"]
    assert {r["logger"] for r in banner} == {"gateway.serve"}
    urls = [url for r in banner for url in r["urls"]]
    assert f"http://127.0.0.1:{running.http_port}/healthz" in urls
    assert f"https://127.0.0.1:{running.https_port}/.well-known/est" in urls
    messages = [r["message"] for r in records["stderr"]]
    assert any(m.startswith("Invalid request from ip=127.0.0.1") for m in messages)
    assert messages.count("Handling signal: term") == 2  # each listener's arbiter
    assert sum(m.startswith("Worker exiting") for m in messages) == 2
    assert messages.count("Shutting down: Master") == 2


def test_client_text_cannot_forge_a_log_line(server: tuple[Server, str], est_user: tuple[str, str]) -> None:
    running, log_format = server
    context = tls_context(running.ca_pem)
    csr = csr_pem(make_csr(ec_key(), subject(CN)))
    est_headers = {"User-Agent": USER_AGENT, "Content-Type": "application/pkcs10"}
    replies = [
        fetch(
            running.https_port,
            "/.well-known/est/simpleenroll",
            context=context,
            method="POST",
            body=csr,
            headers={**est_headers, "Authorization": _basic(*est_user)},
        ),
        fetch(
            running.https_port,
            "/.well-known/est/simpleenroll",
            context=context,
            method="POST",
            body=csr,
            headers={**est_headers, "Authorization": _basic(USER, "wrong")},
        ),
        fetch(running.https_port, LABEL_PATH, context=context, method="POST", body=csr, headers=est_headers),
    ]
    assert [reply.status for reply in replies][1:] == [401, 404]
    assert all(reply.status != 500 for reply in replies)
    request_ids = [reply.headers["x-request-id"] for reply in replies]
    assert _malformed_request(running.http_port).startswith(b"HTTP/1.1 400 ")  # gunicorn's own refusal
    stderr = _wait_for(running, request_ids)

    lines = stderr.split("\n")[:-1]
    assert stderr.endswith("\n") and lines
    assert stderr.splitlines() == lines  # no NEL, U+2028, FS/GS/RS or CR: a viewer sees these same lines
    for line in lines:
        assert _RAW_BREAKS.search(line) is None, line
        assert not line.lstrip(" |").startswith("INJECTED"), line
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line, gunicorn's included, is one object
        assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
        access = [r for r in records if r["logger"] == "gateway.access" and r["request_id"] in request_ids]
        assert [r["user_agent"] for r in access] == [USER_AGENT] * 3  # JSON keeps the text; a reader decodes it
        assert LABEL_SHOWN["json"] in {r["path"].split("/")[3] for r in access}
        messages = "\n".join(r["message"] for r in records)
        assert LABEL_SHOWN["json"] in messages  # "EST <label> simpleenroll refused (404)"
        refusals = [r for r in records if r["logger"] == "est.views" and "refused" in r["message"]]
        named = {r["request_id"] for r in refusals}  # each names its request (the first: if the policy refused)
        assert set(request_ids[1:]) <= named <= set(request_ids)
        _every_line_is_json_through_shutdown(running)
    else:
        assert all(_TEXT_RECORD.match(line) or line.startswith(CONTINUATION) for line in lines), stderr
        assert any(" gunicorn.error: Booting worker" in line for line in lines)
        assert "gw-test\\x85INJECTED agent \\x9b31m" in stderr
        assert LABEL_SHOWN["text"] in stderr
        messages = stderr
    # The subject reaches the log escaped, whether the policy refuses it (quoted) or it is issued.
    assert "dev\\nINJECTED log line \\x1b[31m" in messages or CN in messages, messages
