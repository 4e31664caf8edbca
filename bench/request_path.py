"""How much of our code one request walks through: distinct functions and files per protocol operation.

A reader follows a request by reading the functions it calls; this counts them. The gateway is
opened in this process on a fresh `gateway init` data directory and driven through Flask's test
client: one SCEP PKCSReq (static challenge, AES-256, SHA-256, RSA-2048 device key) and one EST
simpleenroll (Basic user, P-256 CSR). Each operation runs once untraced (first-use paths: caches,
lazy imports) and then once under a profiler that records every Python function entered whose
file lies in one of our packages. Usage:

    .venv/bin/python bench/request_path.py [--list]

`--prepare DIR` and `--replay DIR` split the run in two: the first writes the data directory and
the request bytes, the second measures them, so two revisions of the code can be measured on the
very same requests (prepare with one checkout, replay with each).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "scep", "est", "shared_ca", "migration_tools")
CHALLENGE = "bench-static-challenge"
USER, PASSWORD = "bench", "bench-password-1"
SCEP_PATH = "/scep?operation=PKIOperation"
EST_PATH = "/.well-known/est/simpleenroll"


@dataclass(frozen=True)
class Walk:
    """The functions of ours one request entered: (file relative to the project, first line, name)."""

    operation: str
    status: int
    functions: frozenset[tuple[str, int, str]]

    @property
    def files(self) -> set[str]:
        return {path for path, _, _ in self.functions}

    @property
    def named(self) -> set[tuple[str, int, str]]:
        """The functions with a name: no lambdas, comprehensions or generator expressions."""
        return {f for f in self.functions if "<" not in f[2]}


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def prepare(directory: Path) -> None:
    """A data directory with a static SCEP challenge and an EST user, and two requests of each protocol."""
    from gateway.config import load_config
    from gateway.initdir import InitOptions, initialise
    from gateway.runtime import open_storage
    from scep.asn1 import Digest, MessageType
    from scep.client_messages import build_pki_request, self_signed_signer
    from scep.envelope import ContentCipher
    from shared_ca.keys import KeyType
    from shared_ca.storage.est_users import hash_password

    data_dir = directory / "data"
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256, scep_challenge=CHALLENGE))
    config = load_config(data_dir, environ={})
    storage = open_storage(config)
    try:
        storage.est_users.add_est_user(
            USER, hash_password(PASSWORD), kind="password", created_by="bench", now=dt.datetime.now(dt.UTC)
        )
    finally:
        storage.db.dispose()
    ra = x509.load_pem_x509_certificate((data_dir / "ra" / "ra.crt").read_bytes())
    for number in (1, 2):
        key = rsa.generate_private_key(65537, 2048)
        name = _subject(f"bench-scep-{number}")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(name)
            .add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, CHALLENGE.encode())
            .sign(key, hashes.SHA256())
        )
        body = build_pki_request(
            MessageType.PKCSReq,
            content_der=csr.public_bytes(Encoding.DER),
            signer_cert=self_signed_signer(key, name),
            signer_key=key,
            recipient_cert=ra,
            transaction_id=uuid.uuid4().hex,
            sender_nonce=os.urandom(16),
            digest=Digest.SHA256,
            content_cipher=ContentCipher.AES256,
        )
        (directory / f"scep-{number}.der").write_bytes(body)
        est_csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(_subject(f"bench-est-{number}"))
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        )
        (directory / f"est-{number}.b64").write_bytes(base64.b64encode(est_csr.public_bytes(Encoding.DER)))


def _ours(filename: str) -> str | None:
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return str(relative) if relative.parts[0] in PACKAGES else None


def _traced(operation: str, send: Callable[[], Any]) -> Walk:
    seen: set[tuple[str, int, str]] = set()

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call":
            code = frame.f_code
            path = _ours(code.co_filename)
            if path is not None:
                seen.add((path, code.co_firstlineno, code.co_qualname))

    sys.setprofile(profile)
    try:
        response = send()
    finally:
        sys.setprofile(None)
    return Walk(operation, response.status_code, frozenset(seen))


def replay(directory: Path) -> list[Walk]:
    """Open the gateway on a copy of the prepared data directory and walk one request of each protocol."""
    from gateway.app import create_app
    from gateway.config import load_config

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        shutil.copytree(directory / "data", data_dir)
        app = create_app(load_config(data_dir, environ={}))
        client = app.test_client()
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        def scep(number: int) -> Any:
            body = (directory / f"scep-{number}.der").read_bytes()
            return client.post(SCEP_PATH, data=body, headers={"Content-Type": "application/x-pki-message"})

        def est(number: int) -> Any:
            body = (directory / f"est-{number}.b64").read_bytes()
            headers = {"Authorization": f"Basic {token}", "Content-Type": "application/pkcs10"}
            return client.post(EST_PATH, data=body, headers=headers, base_url="https://localhost")

        walks = []
        for operation, send in (("SCEP PKCSReq", scep), ("EST simpleenroll", est)):
            warm = send(1)
            assert warm.status_code == 200, (operation, warm.status_code, warm.data[:200])
            walk = _traced(operation, functools.partial(send, 2))
            assert walk.status == 200, (operation, walk.status)
            walks.append(walk)
        return walks


def _print(walks: list[Walk], listing: bool) -> None:
    print(f"{'operation':<18} {'functions':>9} {'named':>5} {'files':>5}")
    for walk in walks:
        print(f"{walk.operation:<18} {len(walk.functions):>9} {len(walk.named):>5} {len(walk.files):>5}")
    if listing:
        for walk in walks:
            print(f"\n# {walk.operation}")
            for path, line, name in sorted(walk.functions):
                print(f"{path}:{line} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="also list every function, file by file")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="only write the data directory and requests")
    parser.add_argument("--replay", type=Path, metavar="DIR", help="only measure requests written by --prepare")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if args.replay:
        _print(replay(args.replay), args.list)
        return
    with tempfile.TemporaryDirectory() as scratch:
        prepare(Path(scratch))
        _print(replay(Path(scratch)), args.list)


if __name__ == "__main__":
    main()
