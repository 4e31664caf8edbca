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
6. a device enrolls over EST with an EST user of its own, never having used SCEP;
7. `gateway migrate report` shows device2 and device3 `migrated`, device1 still `legacy`, the new
   device `native`, and 66.7 % migrated (of the three SCEP devices), per group too.

The node is started right after `gateway init` and never restarted: it trusts the imported legacy
CA's client certificates by itself within seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.test_est_interop import sh
from tests.test_migration_import_real import MadeInventory, micromdm_depot  # noqa: F401 - the fixture
from tests.test_scep_interop import client_env, server_log
from tests.test_serve import Server, fetch, free_ports, gateway_command, openssl, start_server, stop_server

pytestmark = pytest.mark.slow

COMMAND_SECONDS = 60.0


def gw(data_dir: Path, *args: str) -> str:
    done = gateway_command(*args, "--data-dir", str(data_dir))
    assert done.returncode == 0, f"gateway {' '.join(args)}\n{done.stdout}{done.stderr}"
    return done.stdout


def gw_stdin(data_dir: Path, text: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--data-dir", str(data_dir)],
        input=text, capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


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
    # The node serves from here on and is never restarted: it follows the imported legacy CA by itself.
    server = start_server(data_dir, work, http_port=http_port)
    with (data_dir / "config.toml").open("a") as config:  # what the map file tells devices
        config.write(f'\n[migration]\nest_url = "https://127.0.0.1:{server.https_port}/.well-known/est"\n')
    try:
        until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%d")
        gw(data_dir, "migrate", "import", "--from", "micromdm-depot", str(micromdm_depot.path), "--trust-until",
           until, "--group", "fleet")  # fmt: skip
        export = work / "mdm-export.csv"
        export.write_text("device_id,group,owner\ndevice2,pilot,Ann\ndevice3,kiosks,Front desk\n")
        gw(data_dir, "migrate", "import", "--from", "csv", str(export))
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
    reenroll = (
        f"curl -sS -o re.out -w '%{{http_code}}' --cacert {server.ca_pem} --cert client.pem --key client.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @re.b64 {pilot['est_url']}/simplereenroll"
    )
    deadline = time.monotonic() + COMMAND_SECONDS  # the node picks the legacy CA up within seconds
    while (status := http_status(reenroll, device2)) != "200":
        assert time.monotonic() < deadline, f"simplereenroll answered {status}\n{server_log(server)}"
        time.sleep(0.5)
    sh("openssl base64 -d -in re.out | openssl pkcs7 -inform DER -print_certs > est.pem", device2, server)
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

    # a device on EST from the start, with an EST user of its own: native, never counted as migrated
    gw_stdin(server.data_dir, "native-pass\n", "est-user", "add", "native-user", "--password-stdin")
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout n.key -subj /CN=native-1 "
        "-outform DER | openssl base64 > n.b64",
        d,
        server,
    )
    native = (
        f"curl -sS -o n.out -w '%{{http_code}}' --cacert {server.ca_pem} --user native-user:native-pass "
        f"-H 'Content-Type: application/pkcs10' --data-binary @n.b64 {base}/simpleenroll"
    )
    assert http_status(native, d) == "200", server_log(server)

    after = report(server)
    entries = {entry["identity"]: entry for entry in after["to_move"]}
    assert set(entries) == {"device1"}, entries
    assert entries["device1"]["state"] == "legacy"
    totals = after["totals"]
    assert (totals["legacy"], totals["migrated"], totals["native"], totals["total"]) == (1, 2, 1, 4), totals
    assert totals["percent_migrated"] == 66.7  # 2 of the 3 SCEP devices; native-1 is apart
    groups = {group["name"]: group for group in after["groups"]}
    assert (groups["pilot"]["migrated"], groups["pilot"]["percent_migrated"]) == (1, 100.0)
    assert (groups["kiosks"]["migrated"], groups["kiosks"]["percent_migrated"]) == (1, 100.0)
    assert (groups["fleet"]["legacy"], groups["fleet"]["percent_migrated"]) == (1, 0.0)
    assert (groups[None]["native"], groups[None]["percent_migrated"]) == (1, None)

    # The dashboard's API (what the page draws) says the same, from the running node.
    token = gw(server.data_dir, "admin-token", "add", "e2e").strip()
    context = ssl.create_default_context(cafile=str(server.ca_pem))
    reply = fetch(
        server.https_port, "/admin/api/migration/summary", context=context, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status == 200, reply.body
    dashboard = json.loads(reply.body)
    assert dashboard["totals"] == totals
    assert {g["name"]: g for g in dashboard["groups"]} == groups
