"""Trust changes reach a running `gateway serve` without a restart (issue 13, point 4): a legacy CA
imported while it serves is accepted for EST client certificates within seconds, a legacy window that
ends is refused at once, and `gateway ca rollover` is served by GetNextCACert (GatewayLoader.refresh,
the workers' trust-watch)."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import update

from gateway.config import load_config
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.schema import issuers
from tests.support import ec_key, make_csr
from tests.test_est_auth_matrix import Answer, certificate_of, post
from tests.test_migration_import import _LEAF_KEY as LEGACY_LEAF_KEY
from tests.test_migration_import import LegacyCA
from tests.test_serve import (
    Server,
    child_env,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    start_server,
    stop_server,
)
from tests.test_stays_up_serve import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("live-trust")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port, child_env())
    server = start_server(data_dir, workdir, env=child_env(), http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


def legacy_device(tmp_path: Path, ca: LegacyCA, cn: str) -> tuple[x509.Certificate, tuple[Path, Path]]:
    """A certificate the legacy CA issued to `cn`, with its key, as the files a TLS client presents."""
    certificate = ca.issue(cn)
    cert_file, key_file = tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"
    cert_file.write_bytes(certificate.public_bytes(Encoding.PEM))
    key_file.write_bytes(
        LEGACY_LEAF_KEY.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate, (cert_file, key_file)


def reenroll(node: Server, certificate: x509.Certificate, client: tuple[Path, Path]) -> Answer | None:
    """simplereenroll authenticated by the legacy certificate (a new key, the same subject); None when
    the TLS handshake (or the connection) refused the certificate."""
    body = base64.encodebytes(make_csr(ec_key(), certificate.subject).public_bytes(Encoding.DER))
    try:
        return post(node, "simplereenroll", body, client=client)
    except (ssl.SSLError, OSError):
        return None


def run(node: Server, *args: str) -> str:
    done = gateway_command(*args, "--data-dir", str(node.data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def test_a_legacy_ca_imported_while_serving_is_trusted_within_seconds_and_its_end_refused_at_once(
    node: Server, tmp_path: Path
) -> None:
    ca = LegacyCA(name=f"Live Legacy CA {uuid.uuid4().hex[:8]}")
    certificate, client = legacy_device(tmp_path, ca, "live-1")
    assert reenroll(node, certificate, client) is None  # an unknown CA: the handshake refuses it

    bundle = tmp_path / "legacy.pem"
    bundle.write_bytes(ca.certificate.public_bytes(Encoding.PEM) + certificate.public_bytes(Encoding.PEM))
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%d")
    said = run(node, "migrate", "import", "--from", "pem", str(bundle), "--trust-until", until)
    assert "follows the change within seconds, no restart" in said

    answers: list[Answer | None] = []

    def accepted() -> bool:
        answers.append(reenroll(node, certificate, client))
        return answers[-1] is not None and answers[-1].status == 200

    eventually(accepted, "the legacy certificate accepted by the running node")
    answer = answers[-1]
    assert answer is not None
    renewed = certificate_of(answer)
    assert renewed.subject == certificate.subject and renewed.issuer != ca.certificate.subject

    # The window ends (time passes, or it is moved): the very next request is refused, with a reason.
    engine = create_store_engine(load_config(node.data_dir, environ={}).database_url)
    try:
        with engine.begin() as conn:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
            conn.execute(
                update(issuers)
                .where(issuers.c.subject == ca.certificate.subject.rfc4514_string())
                .values(trust_until=past)
            )
    finally:
        engine.dispose()
    refused = reenroll(node, certificate, client)
    assert refused is not None and refused.status == 403, refused
    assert "issued" not in refused.text


def test_a_ca_rollover_is_served_by_the_running_node(node: Server) -> None:
    https = ssl.create_default_context(cafile=str(node.ca_pem))

    def next_ca(port: int, context: ssl.SSLContext | None = None) -> int:
        return fetch(port, "/scep?operation=GetNextCACert", context=context).status

    assert next_ca(node.http_port) == 404
    run(node, "ca", "rollover")

    def served() -> bool:  # by every worker of both listeners: a few answers in a row from each
        return all(next_ca(node.http_port) == 200 and next_ca(node.https_port, https) == 200 for _ in range(6))

    eventually(served, "GetNextCACert answered by every worker of the running node")
    caps = fetch(node.http_port, "/scep?operation=GetCACaps").body.decode()
    assert "GetNextCACert" in caps.split()
