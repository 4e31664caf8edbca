"""The migration, end to end, through a real `gateway serve` and a real micromdm depot.

micromdm's `scepserver` and `scepclient` (Debian package `scep`) make a depot with three enrolled
devices (tests/test_migration_import_real.py's fixture). Then, as an admin would:

1. `gateway migrate import --from micromdm-depot` brings the depot's CA in as a legacy issuer with a
   migration window, and its certificates as devices of group `fleet`;
2. `gateway migrate import --from csv` (an MDM export) moves device2 to group `pilot` and device3
   to group `kiosks`;
3. `gateway migrate map --group pilot --mode certificate` and `--group kiosks --mode bootstrap`;
4. device2 authenticates an EST simplereenroll with curl using the certificate micromdm issued it;
5. device3 enrolls over EST with its one-time bootstrap password, which then no longer works;
6. `gateway migrate report` shows device2 and device3 `migrated` and device1 still `legacy`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.test_est_interop import sh
from tests.test_migration_import_real import MadeInventory, micromdm_depot  # noqa: F401 - the fixture
from tests.test_scep_interop import client_env, server_log
from tests.test_serve import Server, free_ports, gateway_command, openssl, start_server, stop_server

pytestmark = pytest.mark.slow

COMMAND_SECONDS = 60.0


def gw(data_dir: Path, *args: str) -> str:
    done = gateway_command(*args, "--data-dir", str(data_dir))
    assert done.returncode == 0, f"gateway {' '.join(args)}\n{done.stdout}{done.stderr}"
    return done.stdout


def http_status(script: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=client_env(), capture_output=True, timeout=COMMAND_SECONDS, check=False
    )
    return done.stdout.decode().strip()


@pytest.fixture(scope="module")
def migrated(micromdm_depot: MadeInventory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:  # noqa: F811
    work = tmp_path_factory.mktemp("migration-e2e")
    data_dir = work / "data"
    (http_port,) = free_ports(1)
    gw(data_dir, "init", "--ca-key-type", "p256", "--public-base-url", f"http://127.0.0.1:{http_port}")
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%d")
    gw(data_dir, "migrate", "import", "--from", "micromdm-depot", str(micromdm_depot.path), "--trust-until", until,
       "--group", "fleet")  # fmt: skip
    export = work / "mdm-export.csv"
    export.write_text("device_id,group,owner\ndevice2,pilot,Ann\ndevice3,kiosks,Front desk\n")
    gw(data_dir, "migrate", "import", "--from", "csv", str(export))
    # The HTTPS listener trusts client certificates of the legacy CA once it is imported: start after.
    server = start_server(data_dir, work, http_port=http_port)
    with (data_dir / "config.toml").open("a") as config:  # what the map file tells devices
        config.write(f'\n[migration]\nest_url = "https://127.0.0.1:{server.https_port}/.well-known/est"\n')
    try:
        yield server, work
    finally:
        stop_server(server)


def report(server: Server) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(gw(server.data_dir, "migrate", "report", "--format", "json"))
    return data


def test_import_map_reenroll_and_report(migrated: tuple[Server, Path], micromdm_depot: MadeInventory) -> None:  # noqa: F811
    server, work = migrated
    base = f"https://127.0.0.1:{server.https_port}/.well-known/est"
    before = report(server)
    assert before["totals"]["legacy"] == 3, before["totals"]

    # certificate mode for the pilot group: no secret, the micromdm certificate is the credential
    gw(server.data_dir, "migrate", "map", "--group", "pilot", "--mode", "certificate", "--out", str(work / "pilot.csv"))
    with (work / "pilot.csv").open() as rows:
        (pilot,) = list(csv.DictReader(rows))
    assert (pilot["device_id"], pilot["mode"], pilot["est_url"]) == ("device2", "certificate", base)

    device2 = micromdm_depot.work / "device2"
    legacy_cert = x509.load_pem_x509_certificate((device2 / "client.pem").read_bytes())
    sh(
        "openssl x509 -x509toreq -in client.pem -signkey client.key "
        "| openssl req -outform DER | openssl base64 > re.b64",
        device2,
        server,
    )
    sh(
        f"curl -sS --fail --cacert {server.ca_pem} --cert client.pem --key client.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @re.b64 {pilot['est_url']}/simplereenroll "
        "| openssl base64 -d | openssl pkcs7 -inform DER -print_certs > est.pem",
        device2,
        server,
    )
    est_cert = x509.load_pem_x509_certificate((device2 / "est.pem").read_bytes())
    assert est_cert.subject == legacy_cert.subject
    verified = openssl("verify", "-CAfile", str(server.ca_pem), str(device2 / "est.pem"))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # bootstrap mode for the kiosks: a one-time password, good for exactly one enrollment
    gw(server.data_dir, "migrate", "map", "--group", "kiosks", "--mode", "bootstrap", "--out", str(work / "boot.csv"))
    with (work / "boot.csv").open() as rows:
        (kiosk,) = list(csv.DictReader(rows))
    assert kiosk["device_id"] == "device3" and kiosk["mode"] == "bootstrap" and kiosk["password"]
    d = work / "kiosk"
    d.mkdir()
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.key -subj /CN=device3 "
        "-outform DER | openssl base64 > k.b64",
        d,
        server,
    )
    enroll = (
        f"curl -sS -o out.b64 -w '%{{http_code}}' --cacert {server.ca_pem} "
        f"--user '{kiosk['username']}:{kiosk['password']}' "
        f"-H 'Content-Type: application/pkcs10' --data-binary @k.b64 {kiosk['est_url']}/simpleenroll"
    )
    assert http_status(enroll, d) == "200", server_log(server)
    assert http_status(enroll, d) == "403"  # the one-time password is spent

    after = report(server)
    entries = {entry["identity"]: entry for entry in after["to_move"]}
    assert set(entries) == {"device1"}, entries
    assert entries["device1"]["state"] == "legacy"
    assert after["totals"]["migrated"] == 2 and after["totals"]["legacy"] == 1, after["totals"]
    groups = {group["name"]: group for group in after["groups"]}
    assert groups["pilot"]["migrated"] == 1 and groups["kiosks"]["migrated"] == 1 and groups["fleet"]["legacy"] == 1
