"""Capture SCEP requests from real clients into test vectors (a test tool, not product code).

A tiny SCEP responder on 127.0.0.1 that answers GetCACaps and GetCACert like a SCEP server (RA + CA
from this directory) and saves every PKIOperation message it receives, raw DER, to OUT/LABEL.der
(further ones to OUT/LABEL.2.der, OUT/LABEL.3.der, ...) with a JSON side file OUT/LABEL[.N].json:
the PKIOperation's method, path, query, HTTP version, headers, Content-Type and User-Agent, and every
GetCACaps/GetCACert/other request line the client sent before it. A PKIOperation is answered with
HTTP 500 (no CertRep yet), so the client stops.

    python tests/vectors/capture.py --port 8390 --label scepclient-pkcsreq [--omit-cap Renewal]

Stop it with SIGTERM or Ctrl-C. Only ever binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

HERE = Path(__file__).resolve().parent
CA_CAPS = "POSTPKIOperation\nSHA-1\nSHA-256\nSHA-512\nAES\nDES3\nRenewal\nSCEPStandard\n"
MAX_BODY = 1 << 20


def _raw_query_values(query: str, name: str) -> list[str]:
    """The still-encoded values of `name` in a raw query string (no '+' to space conversion)."""
    values = []
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if sep and urllib.parse.unquote(key) == name:
            values.append(value)
    return values


def decode_get_message(raw_value: str) -> tuple[bytes, list[str]]:
    """DER of a GET `message` value (URL-encoded base64) and the repairs it needed."""
    repairs: list[str] = []
    text = urllib.parse.unquote(raw_value)
    if " " in text:
        repairs.append("space read as '+'")
        text = text.replace(" ", "+")
    stripped = "".join(text.split())
    if stripped != text:
        repairs.append("whitespace removed")
    if "-" in stripped or "_" in stripped:
        repairs.append("URL-safe alphabet")
        stripped = stripped.replace("-", "+").replace("_", "/")
    if len(stripped) % 4:
        repairs.append("padding added")
        stripped += "=" * (-len(stripped) % 4)
    return base64.b64decode(stripped, validate=True), repairs


def url_encoding_of(raw_value: str, der: bytes) -> str | None:
    """Name the encoding that reproduces `raw_value` byte for byte from `der`, if a common one does."""
    b64 = base64.b64encode(der).decode("ascii")
    candidates = {
        "base64, percent-encoded with quote(safe='')": urllib.parse.quote(b64, safe=""),
        "base64, percent-encoded with quote(safe='/')": urllib.parse.quote(b64, safe="/"),
        "base64, not percent-encoded": b64,
        "base64, quote_plus()": urllib.parse.quote_plus(b64),
    }
    for name, candidate in candidates.items():
        if candidate == raw_value:
            return name
    return None


class Recorder:
    """Keeps the requests seen since the last PKIOperation and writes the vector files."""

    def __init__(self, out: Path, label: str) -> None:
        self.out = out
        self.label = label
        self.count = 0
        self.preceding: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def note(self, request: dict[str, Any]) -> None:
        with self.lock:
            self.preceding.append(request)

    def save(self, der: bytes, request: dict[str, Any]) -> Path:
        with self.lock:
            self.count += 1
            stem = self.label if self.count == 1 else f"{self.label}.{self.count}"
            (self.out / f"{stem}.der").write_bytes(der)
            side = {
                "file": f"{stem}.der",
                "captured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "pkioperation": request,
                "preceding_requests": self.preceding,
            }
            (self.out / f"{stem}.json").write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
            self.preceding = []
            return self.out / f"{stem}.der"


def make_handler(recorder: Recorder, cacert_der: bytes, caps: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vector-capture/1"

        def _describe(self) -> dict[str, Any]:
            path, _, query = self.path.partition("?")
            return {
                "method": self.command,
                "path": path,
                "query": query,
                "http_version": self.request_version,
                "headers": [f"{name}: {value}" for name, value in self.headers.items()],
                "content_type": self.headers.get("Content-Type"),
                "user_agent": self.headers.get("User-Agent"),
            }

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            request = self._describe()
            query = request["query"]
            operations = _raw_query_values(query, "operation")
            operation = urllib.parse.unquote_plus(operations[0]) if operations else ""
            body = b""
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, b"too large\n", "text/plain")
                return
            if length:
                body = self.rfile.read(length)
                request["body_length"] = len(body)
            if operation == "PKIOperation":
                self._pkioperation(request, query, body)
                return
            recorder.note(request)
            if operation == "GetCACaps":
                self._reply(200, caps.encode("ascii"), "text/plain")
            elif operation == "GetCACert":
                self._reply(200, cacert_der, "application/x-x509-ca-ra-cert")
            else:
                self._reply(400, b"unknown operation\n", "text/plain")

        def _pkioperation(self, request: dict[str, Any], query: str, body: bytes) -> None:
            if self.command == "POST":
                der = body
            else:
                values = _raw_query_values(query, "message")
                if not values:
                    recorder.note(request)
                    self._reply(400, b"no message\n", "text/plain")
                    return
                try:
                    der, repairs = decode_get_message(values[0])
                except (binascii.Error, ValueError):
                    recorder.note(request)
                    self._reply(400, b"bad base64\n", "text/plain")
                    return
                encoding = url_encoding_of(values[0], der)
                request["message_param"] = {
                    "encoded_length": len(values[0]),
                    "encoding": encoding,
                    "repairs": repairs,
                }
                if encoding is not None:
                    # Reproducible from the .der with the named encoding: keep the side file small.
                    request["query"] = query.replace(values[0], "<message>", 1)
            saved = recorder.save(der, request)
            print(f"capture: saved {saved.name} ({len(der)} bytes, {self.command})", file=sys.stderr, flush=True)
            self._reply(500, b"capture only: no CertRep\n", "text/plain")

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_HEAD(self) -> None:
            self._handle()

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--label", required=True, help="file name stem of the captured message")
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the vector files")
    parser.add_argument("--ra", type=Path, default=HERE / "ra.pem")
    parser.add_argument("--ca", type=Path, default=HERE / "ca.pem")
    parser.add_argument(
        "--omit-cap", action="append", default=[], metavar="CAP", help="leave CAP out of the GetCACaps answer"
    )
    args = parser.parse_args(argv)
    caps = "".join(f"{cap}\n" for cap in CA_CAPS.split() if cap not in args.omit_cap)
    chain = [x509.load_pem_x509_certificate(args.ra.read_bytes()), x509.load_pem_x509_certificate(args.ca.read_bytes())]
    cacert_der = pkcs7.serialize_certificates(chain, Encoding.DER)
    recorder = Recorder(args.out, args.label)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(recorder, cacert_der, caps))
    print(f"capture: listening on http://127.0.0.1:{server.server_port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
