"""Importing inventories the real legacy tools made, through `gateway migrate import`.

- micromdm/scep (Debian package `scep`): `scepserver ca -init` makes a depot; `scepserver` serves
  it, micromdm's `scepclient` enrolls three devices and renews one (with `-allowrenew 0`; the depot
  then marks the first certificate R, without a reason). The import must register the depot's CA as
  a legacy issuer, keep the renewed-away certificate revoked, and let the renewed one authenticate
  (shared_ca.trust.recognise) until the migration window ends.
- OpenSSL `ca`: a minimal openssl.cnf, a self-signed CA, three CSRs signed by `openssl ca`, one
  revoked by `openssl ca -revoke -crl_reason keyCompromise`.

scepserver listens on every interface (`-port` takes no address), so the server and its clients
run in a private network namespace holding only loopback (`unshare --net --map-root-user`) when the
kernel allows one; otherwise directly, their traffic going to 127.0.0.1 only. scripts/test installs
`scep`: a missing binary is a failure that says so, never a skip. Each depot is made once per module
and imported into a fresh data directory per database backend.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from gateway.cli import main
from gateway.config import load_config
from shared_ca.authority import utcnow
from shared_ca.errors import PolicyDenied
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage
from shared_ca.trust import recognise
from tests.test_scep_interop import client_binary, client_env
from tests.test_serve import OPENSSL, free_ports

pytestmark = pytest.mark.slow

CHALLENGE = "Depot-Secret-5"
TOOL_SECONDS = 120.0
DEVICES = ("device1", "device2", "device3")

ENROLL_SCRIPT = r"""
set -eu
ip link set lo up 2>/dev/null || true
"$SCEPSERVER" -depot "$DEPOT" -challenge "$CHALLENGE" -port "$PORT" -allowrenew 0 >"$WORK/scepserver.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
enroll() {
    mkdir -p "$WORK/$1"
    "$SCEPCLIENT" -server-url "http://127.0.0.1:$PORT/scep" -private-key "$WORK/$1/client.key" \
        -certificate "$WORK/$1/client.pem" -challenge "$CHALLENGE" -cn "$1" -organization Test \
        -keySize 2048 >>"$WORK/$1/scepclient.log" 2>&1
}
for device in $DEVICES; do enroll "$device"; done
cp "$WORK/device1/client.pem" "$WORK/device1/first.pem"
enroll device1  # RenewalReq signed by the first certificate
"""

OPENSSL_CNF = """
[ ca ]
default_ca = legacy

[ legacy ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/cacert.pem
private_key = $dir/private/cakey.pem
serial = $dir/serial
default_md = sha256
default_days = 365
policy = anything
unique_subject = no
email_in_dn = no

[ anything ]
commonName = supplied
organizationName = optional

[ req ]
distinguished_name = dn
prompt = no

[ dn ]
CN = Legacy OpenSSL CA

[ v3_ca ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class MadeInventory:
    path: Path
    work: Path


def private_network() -> list[str]:
    """`unshare` arguments for a network namespace of our own, when this kernel and user may make one."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip", path=os.pathsep.join(["/usr/sbin", "/sbin", "/usr/bin"]))
    if unshare is None or ip is None:
        return []
    probe = subprocess.run([unshare, "--net", "--map-root-user", "true"], capture_output=True, check=False)
    return [unshare, "--net", "--map-root-user"] if probe.returncode == 0 else []


def logs(work: Path) -> str:
    return "\n".join(f"--- {p.relative_to(work)}\n{p.read_text(errors='replace')}" for p in sorted(work.rglob("*.log")))


@pytest.fixture(scope="module")
def micromdm_depot(tmp_path_factory: pytest.TempPathFactory) -> MadeInventory:
    server = client_binary("scepserver", "scep")
    client = client_binary("scepclient", "scep")
    work = tmp_path_factory.mktemp("micromdm")
    depot = work / "depot"
    init = subprocess.run(
        [server, "ca", "-init", "-depot", str(depot), "-keySize", "2048"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    env = client_env(
        SCEPSERVER=server,
        SCEPCLIENT=client,
        DEPOT=str(depot),
        WORK=str(work),
        PORT=str(free_ports(1)[0]),
        CHALLENGE=CHALLENGE,
        DEVICES=" ".join(DEVICES),
    )
    done = subprocess.run(
        [*private_network(), "bash", "-c", ENROLL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr + logs(work)
    return MadeInventory(depot, work)


def openssl_ok(*args: str, cwd: Path) -> None:
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=TOOL_SECONDS, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def openssl_ca(tmp_path_factory: pytest.TempPathFactory) -> MadeInventory:
    work = tmp_path_factory.mktemp("openssl")
    ca = work / "ca"
    (ca / "newcerts").mkdir(parents=True)
    (ca / "private").mkdir()
    (ca / "index.txt").write_text("")
    (ca / "serial").write_text("1000\n")
    cnf = work / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF.format(dir=ca))
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl_ok(
        "req",
        "-config",
        str(cnf),
        "-x509",
        *ec,
        "-keyout",
        str(ca / "private" / "cakey.pem"),
        "-out",
        str(ca / "cacert.pem"),
        "-days",
        "3650",
        "-extensions",
        "v3_ca",
        cwd=work,
    )
    for n in (1, 2, 3):
        openssl_ok(
            "req", "-new", *ec, "-keyout", f"d{n}.key", "-out", f"d{n}.csr", "-subj", f"/O=Test/CN=ossl-{n}", cwd=work
        )
        openssl_ok("ca", "-batch", "-config", str(cnf), "-in", f"d{n}.csr", "-out", f"d{n}.pem", cwd=work)
    openssl_ok("ca", "-config", str(cnf), "-revoke", "d2.pem", "-crl_reason", "keyCompromise", cwd=work)
    return MadeInventory(ca, work)


@pytest.fixture
def inventory_store(data_dir: Path) -> Iterator[Storage]:
    engine = create_store_engine(load_config(data_dir, environ={}).database_url)
    try:
        yield Storage.open(engine)
    finally:
        engine.dispose()


def run(runner: CliRunner, data_dir: Path, *args: str) -> str:
    result = runner.invoke(main, ["migrate", "import", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def summary_counts(table: str) -> dict[str, int]:
    return {line.rsplit(maxsplit=1)[0]: int(line.rsplit(maxsplit=1)[1]) for line in table.splitlines()[1:]}


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_real_micromdm_depot_layout(micromdm_depot: MadeInventory) -> None:
    depot = micromdm_depot.path
    first = load(micromdm_depot.work / "device1" / "first.pem")
    renewed = load(micromdm_depot.work / "device1" / "client.pem")
    names = {p.name for p in depot.iterdir()}
    assert names == {
        "ca.pem",
        "ca.key",
        "index.txt",
        "serial",
        "device1.2.pem",
        "device2.3.pem",
        "device3.4.pem",
        "device1.5.pem",
    }
    assert (first.serial_number, renewed.serial_number) == (2, 5)
    lines = [line.split("\t") for line in (depot / "index.txt").read_text().splitlines()]
    assert sorted((f[0], f[3], f[4], f[5]) for f in lines) == [
        ("R", "02", "device1.2.pem", "/C=US/O=Test/OU=MDM/CN=device1"),
        ("V", "03", "device2.3.pem", "/C=US/O=Test/OU=MDM/CN=device2"),
        ("V", "04", "device3.4.pem", "/C=US/O=Test/OU=MDM/CN=device3"),
        ("V", "05", "device1.5.pem", "/C=US/O=Test/OU=MDM/CN=device1"),
    ]
    assert all(len(f[1]) == 13 and f[1].endswith("Z") for f in lines)
    assert [f[2] != "" for f in lines if f[0] == "R"] == [True]


def test_import_real_micromdm_depot(
    runner: CliRunner, data_dir: Path, micromdm_depot: MadeInventory, inventory_store: Storage
) -> None:
    window = utcnow() + dt.timedelta(days=60)
    args = ("--from", "micromdm-depot", str(micromdm_depot.path))
    counts = summary_counts(run(runner, data_dir, *args, "--trust-until", window.isoformat(), "--group", "ios"))
    assert (counts["read"], counts["imported"], counts["skipped"], counts["devices added"]) == (4, 4, 0, 3)
    (issuer,) = inventory_store.issuers.issuers_of_kind("legacy")
    assert issuer.subject == "OU=SCEP CA,O=scep-ca,C=US" and issuer.name.startswith("legacy-scep-ca-")
    devices = inventory_store.devices
    assert {d.identity: (d.state, d.group_name) for d in devices.devices()} == {n: ("legacy", "ios") for n in DEVICES}
    first = load(micromdm_depot.work / "device1" / "first.pem")
    renewed = load(micromdm_depot.work / "device1" / "client.pem")
    found = recognise(inventory_store, renewed, utcnow())
    assert found is not None and found.legacy and found.issuer.id == issuer.id
    with pytest.raises(PolicyDenied, match="revoked"):
        recognise(inventory_store, first, utcnow())
    assert inventory_store.certificates.certificate_by_fingerprint(found.record.fingerprint_sha256) is not None
    with pytest.raises(PolicyDenied, match="no longer trusted"):
        recognise(inventory_store, renewed, window + dt.timedelta(seconds=1))
    again = summary_counts(run(runner, data_dir, *args))
    assert (again["imported"], again["already present"], again["devices already present"]) == (0, 4, 3)


def test_import_real_openssl_ca(
    runner: CliRunner, data_dir: Path, openssl_ca: MadeInventory, inventory_store: Storage
) -> None:
    window = utcnow() + dt.timedelta(days=60)
    counts = summary_counts(
        run(runner, data_dir, "--from", "openssl-ca", str(openssl_ca.path), "--trust-until", window.isoformat())
    )
    assert (counts["read"], counts["imported"], counts["devices added"]) == (3, 3, 3)
    revoked = inventory_store.certificates.list_certificates(now=utcnow(), status="revoked")
    assert [(r.common_name, r.revocation_reason, r.serial_hex) for r in revoked] == [
        ("ossl-2", "keyCompromise", "1001")
    ]
    states = {d.identity: d.state for d in Storage.open(inventory_store.db.engine).devices.devices()}
    assert states == {"ossl-1": "legacy", "ossl-2": "retired", "ossl-3": "legacy"}
    found = recognise(inventory_store, load(openssl_ca.work / "d1.pem"), utcnow())
    assert found is not None and found.legacy
    index_file = openssl_ca.path / "index.txt"
    assert index_file.read_text().splitlines()[1].split("\t")[2].endswith(",keyCompromise")
