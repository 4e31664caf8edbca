"""The `gateway` command line: cert issue/list/show/revoke, crl publish, ca show, db upgrade, and its refusals."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import update

from gateway.cli import main
from gateway.config import load_config
from shared_ca.storage.db import create_store_engine, head_revision
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import certificates
from tests.support import csr_der, csr_pem, ec_key, make_csr, rsa_key, subject

ROW_KEYS = {
    "serial",
    "issuer",
    "subject",
    "sans",
    "status",
    "not_before",
    "not_after",
    "profile",
    "protocol",
    "key",
    "sha256",
    "revoked_at",
    "revocation_reason",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: a GATEWAY_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def gw(runner: CliRunner, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """`gateway ARGS --data-dir DATA_DIR`."""
    return runner.invoke(main, [*args, "--data-dir", str(data_dir)], env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    assert result.exception is None, repr(result.exception)
    return result


def assert_clean_failure(result: Result, *fragments: str, exit_code: int | None = None) -> None:
    """A CLI refusal: exit status != 0, one 'Error:' line holding every fragment, no traceback."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


@contextmanager
def open_storage(data_dir: Path) -> Iterator[Storage]:
    """The data directory's store, for looking behind the CLI; the engine is disposed afterwards."""
    engine = create_store_engine(load_config(data_dir, environ={}).database_url)
    try:
        yield Storage.open(engine)
    finally:
        engine.dispose()


def key_value_lines(text: str) -> dict[str, str]:
    """The table form of one record: 'key  value' lines (the value may be empty)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, *value = line.split(None, 1)
        fields[key] = value[0] if value else ""
    return fields


def ca_certificate(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "ca" / "ca.crt").read_bytes())


def issue(runner: CliRunner, data_dir: Path, csr: bytes, *args: str) -> tuple[str, Result]:
    """Issue over the CLI; returns the serial it reports and the result."""
    csr_file = data_dir.parent / f"request-{len(list(data_dir.parent.glob('request-*')))}.csr"
    csr_file.write_bytes(csr)
    result = ok(gw(runner, data_dir, "cert", "issue", "--csr", str(csr_file), *args))
    match = re.search(r"issued serial ([0-9a-f]+) ", result.stderr)
    assert match, result.stderr
    return match.group(1), result


def list_json(runner: CliRunner, data_dir: Path, *args: str) -> list[dict[str, object]]:
    rows = json.loads(ok(gw(runner, data_dir, "cert", "list", "--format", "json", *args)).stdout)
    assert isinstance(rows, list)
    return rows


# -- cert issue ---------------------------------------------------------------------------------------------


def test_issue_from_pem_csr(runner: CliRunner, data_dir: Path) -> None:
    serial, result = issue(runner, data_dir, csr_pem(make_csr(ec_key(), subject("laptop-7"), dns=["laptop-7.lan"])))
    cert = x509.load_pem_x509_certificate(result.stdout.encode())
    ca = ca_certificate(data_dir)
    cert.verify_directly_issued_by(ca)
    assert format(cert.serial_number, "x") == serial
    assert cert.subject.rfc4514_string() == "CN=laptop-7"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["laptop-7.lan"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert f"issued serial {serial} (CN=laptop-7, profile default)" in result.stderr
    rows = list_json(runner, data_dir)
    assert [r["serial"] for r in rows][-1] == serial
    assert rows[-1]["protocol"] == "cli"
    assert rows[-1]["profile"] == "default"


def test_issue_from_der_csr_under_tls_server_profile_to_a_file(runner: CliRunner, data_dir: Path) -> None:
    out = data_dir.parent / "server.pem"
    csr = csr_der(make_csr(rsa_key(), subject("www.example.org"), ips=["192.0.2.10"]))
    serial, result = issue(runner, data_dir, csr, "--profile", "tls-server", "--out", str(out))
    assert result.stdout == ""
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    cert.verify_directly_issued_by(ca_certificate(data_dir))
    assert format(cert.serial_number, "x") == serial
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["www.example.org"]  # the CN, copied by the profile
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=397, minutes=5)
    assert "profile tls-server" in result.stderr


def test_issue_uses_the_configured_default_profile(runner: CliRunner, data_dir: Path) -> None:
    csr_file = data_dir.parent / "r.csr"
    csr_file.write_bytes(csr_pem(make_csr(ec_key(), subject("srv.example.org"))))
    result = ok(
        gw(runner, data_dir, "cert", "issue", "--csr", str(csr_file), env={"GATEWAY_DEFAULT_PROFILE": "tls-server"})
    )
    assert "profile tls-server" in result.stderr


def _bad_signature() -> bytes:
    der = bytearray(csr_der(make_csr(rsa_key(), subject("tampered"))))
    der[-10] ^= 0x01  # inside the RSA signature, the last field of the CSR
    return bytes(der)


@pytest.mark.parametrize(
    ("csr", "args", "fragments", "exit_code"),
    [
        pytest.param(b"hello, I am not a CSR", [], ["not a PKCS#10 certificate request"], 1, id="fail/not-a-csr"),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
            [],
            ["not a PKCS#10 certificate request"],
            1,
            id="fail/pem-garbage",
        ),
        pytest.param(_bad_signature(), [], ["signature does not verify"], 1, id="fail/bad-signature"),
        pytest.param(
            csr_pem(make_csr(rsa_key(1024))), [], ["RSA key of 1024 bits is too small", "2048"], 1, id="fail/rsa-1024"
        ),
        pytest.param(
            csr_pem(make_csr()),
            ["--profile", "nope"],
            ["--profile", "no profile 'nope'", "default, tls-server"],
            2,
            id="fail/unknown-profile",
        ),
        pytest.param(
            csr_pem(make_csr(name=subject(pseudonym="anon"))),
            [],
            ["subject attribute 2.5.4.65 is not allowed", "'default'"],
            1,
            id="fail/subject-attribute-not-allowed",
        ),
        pytest.param(
            csr_pem(make_csr(name=subject(None, O="Acme"))), [], ["subject must contain CN"], 1, id="fail/no-cn"
        ),
        pytest.param(
            csr_pem(make_csr(emails=["a@example.org"])),
            ["--profile", "tls-server"],
            ["subjectAltName type email is not allowed"],
            1,
            id="fail/san-type-not-allowed",
        ),
    ],
)
def test_issue_refusals(
    runner: CliRunner, data_dir: Path, csr: bytes, args: list[str], fragments: list[str], exit_code: int
) -> None:
    before = len(list_json(runner, data_dir))
    csr_file = data_dir.parent / "request.csr"
    csr_file.write_bytes(csr)
    result = gw(runner, data_dir, "cert", "issue", "--csr", str(csr_file), *args)
    assert_clean_failure(result, *fragments, exit_code=exit_code)
    assert "BEGIN CERTIFICATE" not in result.output
    assert len(list_json(runner, data_dir)) == before


def test_issue_refuses_a_missing_csr_file(runner: CliRunner, data_dir: Path) -> None:
    missing = data_dir.parent / "absent.csr"
    result = gw(runner, data_dir, "cert", "issue", "--csr", str(missing))
    assert_clean_failure(result, "--csr", f"cannot read {missing}", "No such file", exit_code=2)


def test_issue_to_an_unwritable_file_says_how_to_get_the_certificate(runner: CliRunner, data_dir: Path) -> None:
    csr_file = data_dir.parent / "r.csr"
    csr_file.write_bytes(csr_pem(make_csr()))
    blocker = data_dir.parent / "blocker"
    blocker.write_bytes(b"a file, not a directory")
    out = blocker / "cert.pem"
    result = gw(runner, data_dir, "cert", "issue", "--csr", str(csr_file), "--out", str(out))
    assert_clean_failure(result, f"cannot write {out}", "Not a directory", "--pem", exit_code=1)
    match = re.search(r"issued serial ([0-9a-f]+), but", result.output)
    assert match, result.output
    recovered = ok(gw(runner, data_dir, "cert", "show", match.group(1), "--pem")).stdout
    assert x509.load_pem_x509_certificate(recovered.encode()).serial_number == int(match.group(1), 16)


def test_issue_refuses_a_certificate_given_as_csr(runner: CliRunner, data_dir: Path) -> None:
    result = gw(runner, data_dir, "cert", "issue", "--csr", str(data_dir / "ca.pem"))
    assert_clean_failure(result, "not a PKCS#10 certificate request", exit_code=1)


# -- cert list ------------------------------------------------------------------------------------------------


@pytest.fixture
def populated(runner: CliRunner, data_dir: Path) -> dict[str, str]:
    """Beside init's RA and TLS certificates: one valid, one revoked and one expired certificate."""
    serials = {"ra": "", "tls": ""}
    for row in list_json(runner, data_dir):
        serials["ra" if row["profile"] == "scep-ra" else "tls"] = str(row["serial"])
    for name in ("valid", "revoked", "expired"):
        serials[name], _ = issue(runner, data_dir, csr_pem(make_csr(ec_key(), subject(f"dev-{name}"))))
    ok(gw(runner, data_dir, "cert", "revoke", serials["revoked"], "--reason", "key_compromise"))
    # Nothing expires within a test run: age one record in the store instead.
    with open_storage(data_dir) as store, store.engine.begin() as conn:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        conn.execute(update(certificates).where(certificates.c.serial_hex == serials["expired"]).values(not_after=past))
    return serials


def test_list_table(runner: CliRunner, data_dir: Path, populated: dict[str, str]) -> None:
    lines = ok(gw(runner, data_dir, "cert", "list")).stdout.splitlines()
    assert lines[0].split() == ["SERIAL", "STATUS", "NOT_AFTER", "PROFILE", "PROTOCOL", "SUBJECT"]
    rows = [line.split() for line in lines[1:]]
    by_serial = {row[0]: row for row in rows}
    assert list(by_serial) == [populated[n] for n in ("ra", "tls", "valid", "revoked", "expired")]
    assert by_serial[populated["valid"]][1:2] + by_serial[populated["valid"]][3:] == [
        "valid",
        "default",
        "cli",
        "CN=dev-valid",
    ]
    assert by_serial[populated["revoked"]][1] == "revoked"
    assert by_serial[populated["expired"]][1] == "expired"
    assert by_serial[populated["ra"]][3:5] == ["scep-ra", "system"]


def test_list_json(runner: CliRunner, data_dir: Path, populated: dict[str, str]) -> None:
    rows = list_json(runner, data_dir)
    assert [r["serial"] for r in rows] == [populated[n] for n in ("ra", "tls", "valid", "revoked", "expired")]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["issuer"] == "ca"
    revoked = rows[3]
    assert revoked["status"] == "revoked"
    assert revoked["revocation_reason"] == "keyCompromise"
    assert isinstance(revoked["revoked_at"], str)
    assert dt.datetime.fromisoformat(revoked["revoked_at"]) <= dt.datetime.now(dt.UTC)
    assert rows[2]["revoked_at"] is None
    assert rows[2]["key"] == "EC P-256"
    assert rows[1]["sans"] == ["dns:localhost", "ip:127.0.0.1", "ip:::1"]


def test_list_csv(runner: CliRunner, data_dir: Path, populated: dict[str, str]) -> None:
    text = ok(gw(runner, data_dir, "cert", "list", "--format", "csv")).stdout
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert set(reader.fieldnames or []) == ROW_KEYS
    assert [r["serial"] for r in rows] == [populated[n] for n in ("ra", "tls", "valid", "revoked", "expired")]
    assert [r["status"] for r in rows] == ["valid", "valid", "valid", "revoked", "expired"]
    assert rows[1]["sans"] == "dns:localhost, ip:127.0.0.1, ip:::1"
    assert rows[2]["revoked_at"] == ""


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param("valid", ["ra", "tls", "valid"], id="ok/valid"),
        pytest.param("revoked", ["revoked"], id="ok/revoked"),
        pytest.param("expired", ["expired"], id="ok/expired"),
    ],
)
def test_list_by_status(
    runner: CliRunner, data_dir: Path, populated: dict[str, str], status: str, expected: list[str]
) -> None:
    rows = list_json(runner, data_dir, "--status", status)
    assert [r["serial"] for r in rows] == [populated[n] for n in expected]
    assert {r["status"] for r in rows} == {status}


def test_list_limit_and_bad_status(runner: CliRunner, data_dir: Path) -> None:
    assert len(list_json(runner, data_dir, "--limit", "1")) == 1
    assert_clean_failure(gw(runner, data_dir, "cert", "list", "--status", "lost"), "--status", exit_code=2)
    assert_clean_failure(gw(runner, data_dir, "cert", "list", "--format", "xml"), "--format", exit_code=2)


def test_list_empty_result_as_table_and_json(runner: CliRunner, data_dir: Path) -> None:
    assert list_json(runner, data_dir, "--status", "revoked") == []
    table = ok(gw(runner, data_dir, "cert", "list", "--status", "revoked")).stdout
    assert table.splitlines() == ["SERIAL  STATUS  NOT_AFTER  PROFILE  PROTOCOL  SUBJECT"]


# -- cert show ------------------------------------------------------------------------------------------------


def test_show(runner: CliRunner, data_dir: Path) -> None:
    serial, issued = issue(runner, data_dir, csr_pem(make_csr(ec_key(), subject("printer-3"), ips=["10.0.0.3"])))
    table = ok(gw(runner, data_dir, "cert", "show", serial)).stdout
    fields = key_value_lines(table)
    assert fields["serial"] == serial
    assert fields["status"] == "valid"
    assert fields["subject"] == "CN=printer-3"
    assert fields["sans"] == "ip:10.0.0.3"

    data = json.loads(ok(gw(runner, data_dir, "cert", "show", serial, "--format", "json")).stdout)
    assert set(data) == ROW_KEYS
    assert data["serial"] == serial
    assert data["profile"] == "default"
    assert data["sans"] == ["ip:10.0.0.3"]
    cert = x509.load_pem_x509_certificate(issued.stdout.encode())
    assert data["sha256"] == cert.fingerprint(hashes.SHA256()).hex()

    rows = list(csv.reader(io.StringIO(ok(gw(runner, data_dir, "cert", "show", serial, "--format", "csv")).stdout)))
    assert rows[0] == ["field", "value"]
    assert ["serial", serial] in rows

    shown = ok(gw(runner, data_dir, "cert", "show", serial, "--pem")).stdout
    assert shown == issued.stdout


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda s: s.upper(), id="ok/uppercase"),
        pytest.param(lambda s: "0x" + s, id="ok/0x-prefix"),
        pytest.param(lambda s: ":".join(s.zfill(40)[i : i + 2] for i in range(0, 40, 2)), id="ok/colons"),
        pytest.param(lambda s: f"dec:{int(s, 16)}", id="ok/decimal"),
    ],
)
def test_show_accepts_serial_spellings(runner: CliRunner, data_dir: Path, spelling: Callable[[str], str]) -> None:
    serial, _ = issue(runner, data_dir, csr_pem(make_csr()))
    data = json.loads(ok(gw(runner, data_dir, "cert", "show", spelling(serial), "--format", "json")).stdout)
    assert data["serial"] == serial


@pytest.mark.parametrize(
    ("serial", "fragments", "exit_code"),
    [
        pytest.param("abcdef0123", ["no certificate with serial abcdef0123"], 1, id="fail/unknown-serial"),
        pytest.param("zz-top", ["SERIAL", "'zz-top' is not a hexadecimal number"], 2, id="fail/malformed-serial"),
        pytest.param("0", ["SERIAL", "must be positive"], 2, id="fail/zero-serial"),
    ],
)
def test_show_refusals(runner: CliRunner, data_dir: Path, serial: str, fragments: list[str], exit_code: int) -> None:
    assert_clean_failure(gw(runner, data_dir, "cert", "show", serial), *fragments, exit_code=exit_code)


# -- cert revoke ----------------------------------------------------------------------------------------------


def latest_crl(data_dir: Path) -> x509.CertificateRevocationList:
    with open_storage(data_dir) as store:
        issuer = store.issuers.issuer_by_name("ca")
        assert issuer is not None
        record = store.crls.latest_crl(issuer.id)
    assert record is not None
    crl = x509.load_der_x509_crl(record.der)
    ca_key = ca_certificate(data_dir).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@pytest.mark.parametrize(
    ("reason", "flag"),
    [
        pytest.param("key_compromise", x509.ReasonFlags.key_compromise, id="ok/key_compromise"),
        pytest.param("keyCompromise", x509.ReasonFlags.key_compromise, id="ok/rfc-spelling"),
        pytest.param("cessation-of-operation", x509.ReasonFlags.cessation_of_operation, id="ok/dashes"),
        pytest.param("superseded", x509.ReasonFlags.superseded, id="ok/superseded"),
    ],
)
def test_revoke(runner: CliRunner, data_dir: Path, reason: str, flag: x509.ReasonFlags) -> None:
    serial, _ = issue(runner, data_dir, csr_pem(make_csr()))
    result = ok(gw(runner, data_dir, "cert", "revoke", serial, "--reason", reason))
    crl = latest_crl(data_dir)
    assert result.stdout == f"revoked {serial} ({flag.value}); CRL number {crl_number(crl)} published\n"

    revoked = list_json(runner, data_dir, "--status", "revoked")
    assert [r["serial"] for r in revoked] == [serial]
    assert revoked[0]["revocation_reason"] == flag.value
    assert serial not in [r["serial"] for r in list_json(runner, data_dir, "--status", "valid")]

    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == flag


def test_revoke_refusals(runner: CliRunner, data_dir: Path) -> None:
    serial, _ = issue(runner, data_dir, csr_pem(make_csr()))
    ok(gw(runner, data_dir, "cert", "revoke", serial, "--reason", "key_compromise"))
    number = crl_number(latest_crl(data_dir))

    twice = gw(runner, data_dir, "cert", "revoke", serial, "--reason", "superseded")
    assert_clean_failure(twice, f"certificate {serial} is already revoked", exit_code=1)
    assert list_json(runner, data_dir, "--status", "revoked")[0]["revocation_reason"] == "keyCompromise"
    assert crl_number(latest_crl(data_dir)) == number  # no CRL for a refused revocation

    other, _ = issue(runner, data_dir, csr_pem(make_csr()))
    bad_reason = gw(runner, data_dir, "cert", "revoke", other, "--reason", "lost-it")
    assert_clean_failure(bad_reason, "--reason", "unknown revocation reason 'lost-it'", "key_compromise", exit_code=2)
    unknown = gw(runner, data_dir, "cert", "revoke", "abcdef", "--reason", "key_compromise")
    assert_clean_failure(unknown, "no certificate with serial abcdef", exit_code=1)
    malformed = gw(runner, data_dir, "cert", "revoke", "xyz", "--reason", "key_compromise")
    assert_clean_failure(malformed, "SERIAL", "not a hexadecimal number", exit_code=2)
    missing_reason = gw(runner, data_dir, "cert", "revoke", other)
    assert_clean_failure(missing_reason, "--reason", exit_code=2)
    assert [r["serial"] for r in list_json(runner, data_dir, "--status", "revoked")] == [serial]


# -- crl publish ----------------------------------------------------------------------------------------------


def test_crl_publish_increments_the_number(runner: CliRunner, data_dir: Path) -> None:
    first = ok(gw(runner, data_dir, "crl", "publish")).stdout
    crl_1 = latest_crl(data_dir)
    second = ok(gw(runner, data_dir, "crl", "publish")).stdout
    crl_2 = latest_crl(data_dir)
    assert crl_number(crl_2) == crl_number(crl_1) + 1
    assert first.startswith(f"CRL number {crl_number(crl_1)} published; next update ")
    assert second.startswith(f"CRL number {crl_number(crl_2)} published; next update ")
    assert crl_2.issuer == ca_certificate(data_dir).subject
    assert len(crl_2) == 0
    assert crl_2.next_update_utc is not None
    assert crl_2.next_update_utc - crl_2.last_update_utc == dt.timedelta(hours=24)


def test_crl_validity_follows_the_configuration(runner: CliRunner, data_dir: Path) -> None:
    ok(gw(runner, data_dir, "crl", "publish", env={"GATEWAY_CRL_VALIDITY_HOURS": "48"}))
    crl = latest_crl(data_dir)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=48)


# -- ca show ----------------------------------------------------------------------------------------------------


def test_ca_show(runner: CliRunner, data_dir: Path) -> None:
    ca = ca_certificate(data_dir)
    ra = x509.load_pem_x509_certificate((data_dir / "ra" / "ra.crt").read_bytes())
    data = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert data == {
        "issuer": "ca",
        "subject": ca.subject.rfc4514_string(),
        "key": "EC secp256r1",
        "sha256": ca.fingerprint(hashes.SHA256()).hex(),
        "not_before": ca.not_valid_before_utc.isoformat(),
        "not_after": ca.not_valid_after_utc.isoformat(),
        "certificates_issued": 2,
        "crl_url": "http://127.0.0.1:8080/crl/ca.crl",
        "ocsp_url": "http://127.0.0.1:8080/ocsp",
        "ra_subject": ra.subject.rfc4514_string(),
        "ra_not_after": ra.not_valid_after_utc.isoformat(),
        "trust_file": str(data_dir / "ca.pem"),
    }
    issue(runner, data_dir, csr_pem(make_csr()))
    table = ok(gw(runner, data_dir, "ca", "show")).stdout
    fields = key_value_lines(table)
    assert fields["certificates_issued"] == "3"
    assert fields["subject"] == ca.subject.rfc4514_string()
    shown = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(shown, str)
    assert shown in fields["ra_subject"]


def test_ca_show_public_base_url(runner: CliRunner, data_dir: Path) -> None:
    env = {"GATEWAY_PUBLIC_BASE_URL": "https://pki.example/"}
    data = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json", env=env)).stdout)
    assert data["crl_url"] == "https://pki.example/crl/ca.crl"
    assert data["ocsp_url"] == "https://pki.example/ocsp"


# -- db upgrade ---------------------------------------------------------------------------------------------------


def test_db_upgrade_is_idempotent_on_an_initialised_database(runner: CliRunner, data_dir: Path) -> None:
    head = head_revision()
    for _ in range(2):
        assert ok(gw(runner, data_dir, "db", "upgrade")).stdout == f"database at {head} (was {head})\n"
    ok(gw(runner, data_dir, "config", "check"))


def test_db_upgrade_creates_the_schema(runner: CliRunner, tmp_path: Path, database_url: str) -> None:
    config_file = tmp_path / "gw.toml"
    config_file.write_text(f"database_url = {json.dumps(database_url)}\n", encoding="utf-8")
    args = ["db", "upgrade", "--data-dir", str(tmp_path), "--config", str(config_file)]
    head = head_revision()
    assert ok(runner.invoke(main, args)).stdout == f"database at {head} (was empty)\n"
    assert ok(runner.invoke(main, args)).stdout == f"database at {head} (was {head})\n"
    engine = create_store_engine(database_url)
    try:
        assert Storage.open(engine).issuers.list_issuers() == []
    finally:
        engine.dispose()


def test_db_upgrade_refuses_an_unreachable_database(runner: CliRunner, tmp_path: Path) -> None:
    config_file = tmp_path / "gw.toml"
    config_file.write_text('database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n', encoding="utf-8")
    result = runner.invoke(main, ["db", "upgrade", "--data-dir", str(tmp_path), "--config", str(config_file)])
    assert_clean_failure(result, "the database is unavailable", "127.0.0.1", exit_code=1)


# -- the command itself -------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def test_python_dash_m_gateway(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: gateway ")
    for command in ("init", "serve", "config", "ca", "cert", "crl", "db"):
        assert re.search(rf"^\s+{command}\s", helped.stdout, re.MULTILINE), command

    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "cert", "list", "--data-dir", str(tmp_path / "nowhere")],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    nowhere = tmp_path / "nowhere"
    assert refused.stderr == f"Error: no config.toml in {nowhere}: run `gateway init --data-dir {nowhere}` first\n"


def test_version(runner: CliRunner) -> None:
    result = ok(runner.invoke(main, ["--version"]))
    assert re.fullmatch(r"gateway, version \d+\.\d+\.\d+\S*\n", result.stdout)
