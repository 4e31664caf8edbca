"""`gateway backup` of a serving gateway under load, and `gateway restore` into a gateway that serves.

One `gateway serve` on SQLite; EST enrollments run in a thread throughout; `gateway backup` runs as its
own process meanwhile (a copy of gateway.db made this way once held 15 of 21 certificates: the others
were still in the write-ahead log). The archive is restored into a new data directory, and a second
`gateway serve` on it must hold every certificate that existed when the backup began, publish a CRL
that verifies against the CA and lists the certificate revoked before the backup, answer OCSP (good
for an issued certificate, revoked for the revoked one) and enroll.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support import ec_key
from tests.test_est_auth_matrix import PASSWORD, add_est_user, certificate_of, csr_body, post
from tests.test_serve import (
    Server,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    openssl_ocsp,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

USER = "backup-load"
WARM_UP = 4  # enrollments before the backup begins


class Enroller:
    """EST simpleenroll, device after device, in a thread until stopped; what it was issued."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.issued: list[x509.Certificate] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enroller")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            answer = post(self.server, "simpleenroll", csr_body(ec_key(), f"backup-device-{n}"), auth=(USER, PASSWORD))
            if answer.status == 200:
                self.issued.append(certificate_of(answer))
            else:
                self.failures.append(f"{answer.status} {answer.body!r}")

    def __enter__(self) -> Enroller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, count: int, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while len(self.issued) < count:
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, f"only {len(self.issued)} enrollments in {seconds:.0f} s"
            time.sleep(0.02)


def serials(data_dir: Path) -> set[str]:
    """The serials the data directory's SQLite database holds (read-only, beside the running server)."""
    conn = sqlite3.connect(f"file:{data_dir / 'gateway.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT serial_hex FROM certificates")}
    finally:
        conn.close()


def serial_of(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def test_backup_under_load_restores_into_a_gateway_that_serves(tmp_path: Path) -> None:
    data_dir, restored_dir, archive = tmp_path / "data", tmp_path / "restored", tmp_path / "gateway.backup"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    add_est_user(data_dir, USER)
    source = start_server(data_dir, tmp_path, http_port=http_port)
    try:
        with Enroller(source) as enroller:
            enroller.wait_for(WARM_UP)
            revoked = enroller.issued[0]
            done = gateway_command(
                "cert", "revoke", serial_of(revoked), "--reason", "key_compromise", "--data-dir", str(data_dir)
            )
            assert done.returncode == 0, done.stderr
            issued_before = len(enroller.issued)
            existing = serials(data_dir)  # what existed when the backup began
            made = gateway_command("backup", "--data-dir", str(data_dir), "--out", str(archive))
            issued_during = len(enroller.issued) - issued_before
            enroller.wait_for(len(enroller.issued) + 1)  # the server still enrolls after the backup
        assert made.returncode == 0, made.stderr
        assert issued_during > 0  # the backup ran while certificates were being issued
        assert not enroller.failures, enroller.failures
    finally:
        assert stop_server(source) == 0, source.stderr_text()

    done = gateway_command("restore", str(archive), "--data-dir", str(restored_dir))
    assert done.returncode == 0, done.stderr
    assert "(current)" in done.stdout
    held = serials(restored_dir)
    assert existing <= held, sorted(existing - held)  # every certificate that existed when it began
    assert serial_of(revoked) in held and {serial_of(c) for c in enroller.issued[:issued_before]} <= held

    restored = start_server(restored_dir, tmp_path)
    try:
        ca = x509.load_pem_x509_certificate((restored_dir / "ca.pem").read_bytes())
        reply = fetch(restored.http_port, "/crl/ca.crl")
        assert reply.status == 200
        crl = x509.load_der_x509_crl(reply.body)
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None

        ocsp_url = f"http://127.0.0.1:{restored.http_port}/ocsp"
        for certificate, status in ((enroller.issued[1], "good"), (revoked, "revoked")):
            cert_file = tmp_path / f"{serial_of(certificate)}.pem"
            cert_file.write_bytes(certificate.public_bytes(Encoding.PEM))
            assert f"{cert_file}: {status}" in openssl_ocsp(restored, ocsp_url, cert_file)

        answer = post(restored, "simpleenroll", csr_body(ec_key(), "after-restore"), auth=(USER, PASSWORD))
        assert serial_of(certificate_of(answer)) not in held  # a new serial, recorded in the restored store
        assert serial_of(certificate_of(answer)) in serials(restored_dir)
    finally:
        assert stop_server(restored) == 0, restored.stderr_text()
