"""`gateway migrate map` and migration_tools.mapping: which devices get which EST credential, the
export file (its rows, mode 0600, no overwrite), secrets stored only hashed, re-runs and --rotate,
and each credential really enrolling over EST through the Flask app."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from est.auth import verify_secret
from gateway.cli import main
from gateway.runtime import Gateway
from migration_tools.mapping import (
    EXPORT_COLUMNS,
    ExportFile,
    MappedDevice,
    MapRequest,
    UnreadableExport,
    bootstrap_username,
    device_est_url,
    export_format,
    map_devices,
    read_export,
)
from shared_ca.authority import CertificateAuthority, Issued, PublicUrls
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.keys import KeyType, PrivateKey, generate_private_key
from shared_ca.policy import authorize_csr
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.devices import Devices
from shared_ca.storage.est_users import check_est_user_name
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import metadata
from tests.support import SettableClock, ec_key, make_csr, storage_of, subject
from tests.test_est_views import b64_csr, basic, certs_of, post, tls

BASE = "https://est.example:8443/.well-known/est"

# -- fleet helpers (shared with tests/test_migration_sunset.py) --------------------------------------


def legacy_ca(ca: CertificateAuthority, trust_until: dt.datetime | None, name: str = "ndes") -> CertificateAuthority:
    """A legacy CA registered beside `ca` (same store and clock), trusted until `trust_until`."""
    now = ca.clock()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Legacy CA {name}")])
    material = create_root_ca(generate_private_key(KeyType.P256), ca_name, 3650, now)
    issuer = register_issuer(
        storage_of(ca).issuers, name, material.certificate, kind="legacy", actor="t", now=now, trust_until=trust_until
    )
    urls = PublicUrls("http://legacy.example")
    return CertificateAuthority(
        storage_of(ca).certificates, issuer, material.certificate, material.chain, material.key, urls, ca.clock
    )


def issue(ca: CertificateAuthority, cn: str, key: PrivateKey | None = None) -> Issued:
    policy = authorize_csr(DEFAULT_PROFILES["default"], make_csr(key or ec_key(), subject(cn)), ca.clock())
    return ca.issue(policy, protocol="scep", actor="t")


def add_device(
    devices: Devices,
    identity: str,
    *,
    group: str | None = "lab",
    issued: Issued | None = None,
    state: str = "legacy",
    now: dt.datetime | None = None,
) -> None:
    record = issued.record if issued is not None else None
    device = NewDevice(
        identity,
        "import:test",
        state=state,
        group_name=group,
        certificate_id=record.id if record else None,
        certificate_not_after=record.not_after if record else None,
    )
    assert InventoryRecords(devices.db).add_imported_devices([device], now or dt.datetime.now(dt.UTC)) == (1, 0)


def run(runner: CliRunner, data_dir: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.output


def facts(output: str) -> dict[str, str]:
    """The `key  value` lines a command printed first (gateway.cli.output.render_mapping)."""
    block = output.split("\n\n", 1)[0]
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in block.splitlines())


def gateway_of(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["gateway"].get()
    return gw


def database_text(devices: Devices) -> str:
    """Every value of every table, as text: where a secret must not be."""
    with devices.db.engine.connect() as conn:
        return "\n".join(repr(row) for table in metadata.sorted_tables for row in conn.execute(select(table)))


# -- the library: which devices, which credentials ----------------------------------------------------


class Fleet:
    def __init__(self, authority: CertificateAuthority) -> None:
        self.ca = authority
        self.storage = storage_of(authority)
        self.devices = self.storage.devices
        self.users = self.storage.est_users
        self.rows: list[MappedDevice] = []

    def map(self, mode: str, **options: Any) -> Any:
        request = MapRequest(mode=mode, est_url=BASE, actor="test", **options)
        return map_devices(self.storage, request, self.ca.clock(), self.rows.append)


@pytest.fixture
def fleet(authority: CertificateAuthority, clock: SettableClock) -> Fleet:
    """lab: own-1 (our valid certificate), legacy-1 (legacy CA, window open), revoked-1, untrusted-1
    (legacy CA with no window), no-cert-1, migrated-1; shop: shop-1 (our valid certificate)."""
    f = Fleet(authority)
    legacy = legacy_ca(authority, clock() + dt.timedelta(days=10))
    untrusted = legacy_ca(authority, None, name="closed")
    revoked = issue(authority, "revoked-1")
    authority.revoke(revoked.record.serial_hex, x509.ReasonFlags.superseded, actor="t")
    add_device(f.devices, "own-1", issued=issue(authority, "own-1"))
    add_device(f.devices, "legacy-1", issued=issue(legacy, "legacy-1"))
    add_device(f.devices, "revoked-1", issued=revoked)
    add_device(f.devices, "untrusted-1", issued=issue(untrusted, "untrusted-1"))
    add_device(f.devices, "no-cert-1")
    add_device(f.devices, "migrated-1", state="migrated")
    add_device(f.devices, "shop-1", group="shop", issued=issue(authority, "shop-1"))
    return f


def test_certificate_mode_maps_only_devices_whose_certificate_authenticates_now(fleet: Fleet) -> None:
    summary = fleet.map("certificate", group="lab")
    assert summary.mapped == ["own-1", "legacy-1"]
    reasons = {s.device_id: s.reason for s in summary.skipped}
    assert set(reasons) == {"revoked-1", "untrusted-1", "no-cert-1"}
    assert reasons["revoked-1"].startswith("the certificate is revoked")
    assert reasons["untrusted-1"].startswith("the certificate's legacy issuer is no longer trusted")
    assert reasons["no-cert-1"] == "no certificate on record"
    assert fleet.rows == [MappedDevice(d, BASE, "certificate") for d in ("own-1", "legacy-1")]
    own = fleet.devices.device("own-1")
    assert own is not None and (own.state, own.mapping_mode) == ("mapped", "certificate")
    assert own.certificate_id is not None
    certificate = fleet.storage.certificates.certificate_by_id(own.certificate_id)
    assert certificate is not None and own.est_credential == certificate.fingerprint_sha256
    assert [d.state for d in map(fleet.devices.device, ("revoked-1", "shop-1", "migrated-1")) if d] == [
        "legacy",
        "legacy",
        "migrated",
    ]
    assert fleet.users.list_est_users() == []  # certificate mode: no secret anywhere


def test_legacy_certificate_is_skipped_once_its_window_closed(fleet: Fleet, clock: SettableClock) -> None:
    clock.advance(days=11)
    summary = fleet.map("certificate", group="lab")
    assert summary.mapped == ["own-1"]
    assert "no longer trusted" in {s.device_id: s.reason for s in summary.skipped}["legacy-1"]


def test_bootstrap_mode_gives_each_device_a_one_time_credential_stored_hashed(
    fleet: Fleet, clock: SettableClock
) -> None:
    summary = fleet.map("bootstrap", group="lab", label="wifi")
    lab = ["own-1", "legacy-1", "revoked-1", "untrusted-1", "no-cert-1"]
    assert summary.mapped == lab and summary.skipped == []
    assert [r.device_id for r in fleet.rows] == lab
    text = database_text(fleet.devices)
    for row in fleet.rows:
        assert row.mode == "bootstrap" and row.est_url == f"{BASE}/wifi"
        assert row.username is not None and row.password is not None
        assert row.username.startswith(f"boot-{row.device_id}-")
        assert len(row.password) == 32  # 192 bits, URL-safe base64
        user = fleet.users.est_user(row.username)
        assert user is not None
        assert (user.kind, user.device_identity, user.uses_left, user.labels) == (
            "bootstrap",
            row.device_id,
            1,
            ("wifi",),
        )
        assert user.expires_at == clock() + dt.timedelta(days=30)
        assert user.secret_hash.startswith("sha256$")
        assert verify_secret(user.secret_hash, row.password)
        assert row.password not in text  # nowhere in the database, hashed or audited
        assert row.password not in repr(row)
        device = fleet.devices.device(row.device_id)
        assert device is not None
        assert (device.state, device.mapping_mode, device.est_credential) == ("mapped", "bootstrap", row.username)
        assert fleet.devices.mapped_label(row.device_id) == "wifi"  # what its legacy certificate renews into
    assert fleet.storage.audit.audit_events(action="devices.mapped")[0].detail["mapped"] == len(lab)


def test_a_second_run_maps_only_new_devices(fleet: Fleet) -> None:
    fleet.map("bootstrap", group="lab")
    fleet.rows.clear()
    again = fleet.map("bootstrap", group="lab")
    assert (again.mapped, again.rotated, fleet.rows, again.already_mapped) == ([], [], [], 5)
    add_device(fleet.devices, "new-1")
    third = fleet.map("bootstrap")  # every group: shop-1 and the newcomer
    assert third.mapped == ["shop-1", "new-1"]
    assert len(fleet.users.list_est_users()) == 7


def test_rotate_issues_new_bootstrap_credentials_and_disables_the_old(fleet: Fleet) -> None:
    fleet.map("bootstrap", group="lab")
    first = {r.device_id: r for r in fleet.rows}
    fleet.rows.clear()
    summary = fleet.map("bootstrap", group="lab", rotate=True)
    assert summary.rotated == list(first) and summary.mapped == [] and summary.disabled_users == 5
    for row in fleet.rows:
        old = fleet.users.est_user(first[row.device_id].username or "")
        new = fleet.users.est_user(row.username or "")
        assert old is not None and old.disabled_at is not None
        assert new is not None and new.disabled_at is None and verify_secret(new.secret_hash, row.password or "")
        assert row.password != first[row.device_id].password
        device = fleet.devices.device(row.device_id)
        assert device is not None and (device.state, device.est_credential) == ("mapped", row.username)


def test_rotate_in_certificate_mode_needs_nothing_new(fleet: Fleet) -> None:
    fleet.map("certificate", group="lab")
    fleet.rows.clear()
    summary = fleet.map("certificate", group="lab", rotate=True)
    assert (summary.rotated, summary.unchanged, fleet.rows) == ([], 2, [])
    # a bootstrap-mapped device rotated into certificate mode loses its bootstrap user
    fleet.map("bootstrap", group="shop")
    (boot,) = fleet.rows
    summary = fleet.map("certificate", group="shop", rotate=True)
    assert summary.rotated == ["shop-1"] and summary.disabled_users == 1
    old = fleet.users.est_user(boot.username or "")
    assert old is not None and old.disabled_at is not None
    shop = fleet.devices.device("shop-1")
    assert shop is not None and shop.mapping_mode == "certificate"


def test_a_row_that_cannot_be_written_maps_nothing(fleet: Fleet) -> None:
    def full_disk(_row: MappedDevice) -> None:
        raise OSError(28, "No space left on device")

    request = MapRequest(mode="bootstrap", est_url=BASE, actor="t", group="shop")
    with pytest.raises(OSError, match="No space"):
        map_devices(fleet.storage, request, fleet.ca.clock(), full_disk)
    shop = fleet.devices.device("shop-1")
    assert shop is not None and shop.state == "legacy"
    (orphan,) = fleet.users.list_est_users()
    assert orphan.disabled_at is not None  # its secret reached no one


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param("laptop-7", id="plain"),
        pytest.param("ann@example.com", id="email"),
        pytest.param("CN with spaces/and:colons", id="spaces-colons"),
        pytest.param("Gerät-ä", id="non-ascii"),
        pytest.param("::::", id="nothing-left"),
        pytest.param("x" * 255, id="longest"),
    ],
)
def test_bootstrap_usernames_fit_the_est_user_rules(identity: str) -> None:
    name = bootstrap_username(identity)
    assert check_est_user_name(name) == name
    assert name.startswith("boot-") and ":" not in name
    assert bootstrap_username(identity) != name


@pytest.mark.parametrize(
    ("base", "label", "url"),
    [
        pytest.param(BASE, None, BASE, id="no-label"),
        pytest.param(BASE + "/", "iot", BASE + "/iot", id="trailing-slash"),
        pytest.param(BASE, "a b", BASE + "/a%20b", id="quoted"),
    ],
)
def test_device_est_url(base: str, label: str | None, url: str) -> None:
    assert device_est_url(base, label) == url


@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("m.csv", None, id="csv"),
        pytest.param("m.JSON", None, id="json-upper"),
        pytest.param("m.txt", "must end in .csv or .json", id="fail/txt"),
        pytest.param("m", "must end in .csv or .json", id="fail/no-extension"),
    ],
)
def test_export_format(name: str, error: str | None) -> None:
    if error is None:
        assert export_format(Path(name)) in ("csv", "json")
    else:
        with pytest.raises(ValueError, match=error):
            export_format(Path(name))


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


ROW = MappedDevice("d1", BASE, "bootstrap", "boot-d1-00", 's3cret,with"quote')


@pytest.mark.usefixtures("open_umask")
def test_export_file_is_0600_and_never_overwritten_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    with ExportFile(path) as export:
        export.write(ROW)
        export.write(MappedDevice("d2", BASE, "certificate"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows == [
        list(EXPORT_COLUMNS),
        ["d1", BASE, "bootstrap", "boot-d1-00", ROW.password],
        ["d2", BASE, "certificate", "", ""],
    ]
    with pytest.raises(FileExistsError):
        ExportFile(path)
    (tmp_path / "elsewhere").write_text("keep", encoding="utf-8")
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        ExportFile(link)  # O_EXCL: a symlink is never followed
    with ExportFile(link, replace=True):
        pass
    assert (tmp_path / "elsewhere").read_text(encoding="utf-8") == "keep"
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600


def test_json_export_stays_a_document_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    with pytest.raises(RuntimeError), ExportFile(path) as export:
        export.write(ROW)
        raise RuntimeError("stop")
    assert json.loads(path.read_text(encoding="utf-8")) == [ROW.as_row()]
    empty = tmp_path / "empty.json"
    ExportFile(empty).close()
    assert json.loads(empty.read_text(encoding="utf-8")) == []


# -- the command, and the credentials it hands out enrolling over EST ----------------------------------


def csv_rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "device_id,est_url,mode,username,password"
    return list(csv.DictReader(io.StringIO(text)))


def est_path(url: str, operation: str) -> tuple[str, str | None]:
    """The label of an exported EST URL (None: the default label) and the operation."""
    path = urlparse(url).path.removeprefix("/.well-known/est").strip("/")
    return operation, path or None


def test_bootstrap_credential_enrolls_over_est_exactly_once(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    gw = gateway_of(app)
    devices = gw.storage.devices
    add_device(devices, "kiosk-1")
    add_device(devices, "kiosk-2", group="shop")
    out = tmp_path / "push.csv"
    output = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--label", "default", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = csv_rows(out)
    assert [r["device_id"] for r in rows] == ["kiosk-1", "kiosk-2"]
    for row in rows:
        assert row["password"] not in output
        assert row["est_url"] == f"{gw.config.est_url}/default"
    summary = facts(output)
    assert summary["mapped"] == "2" and summary["file"].startswith(f"{out} (2 rows, mode 0600")
    row = rows[0]
    operation, label = est_path(row["est_url"], "simpleenroll")
    auth = basic(row["username"], row["password"])
    first = post(client, operation, b64_csr(make_csr(ec_key(), subject("kiosk-1"))), label=label, headers=auth)
    assert first.status_code == 200, first.get_data(as_text=True)
    (cert,) = certs_of(first.get_data())
    assert cert.subject == subject("kiosk-1")
    device = devices.device("kiosk-1")
    assert device is not None and device.state == "migrated"
    again = post(client, operation, b64_csr(make_csr(ec_key(), subject("kiosk-1"))), label=label, headers=auth)
    assert again.status_code == 403  # used up
    other = rows[1]
    stolen = post(
        client,
        operation,
        b64_csr(make_csr(ec_key(), subject("kiosk-1"))),
        label=label,
        headers=basic(other["username"], other["password"]),
    )
    assert stolen.status_code == 403  # bound to kiosk-2


def test_certificate_mode_devices_reenroll_with_their_scep_certificate(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    gw = gateway_of(app)
    devices = gw.storage.devices
    legacy = legacy_ca(gw.authority, gw.authority.clock() + dt.timedelta(days=30))
    keys = {"own-1": ec_key(), "legacy-1": ec_key()}
    held = {
        "own-1": issue(gw.authority, "own-1", keys["own-1"]),
        "legacy-1": issue(legacy, "legacy-1", keys["legacy-1"]),
    }
    for identity, issued in held.items():
        add_device(devices, identity, issued=issued)
    add_device(devices, "no-cert-1")
    out = tmp_path / "push.json"
    output = run(runner, data_dir, "migrate", "map", "--group", "lab", "--out", str(out))
    assert json.loads(out.read_text(encoding="utf-8")) == [
        {"device_id": d, "est_url": gw.config.est_url, "mode": "certificate", "username": None, "password": None}
        for d in ("own-1", "legacy-1")
    ]
    assert facts(output)["skipped"] == "1"
    assert re.search(r"^no-cert-1 +no certificate on record$", output, re.MULTILINE)
    for identity, issued in held.items():
        body = b64_csr(make_csr(ec_key(), subject(identity)))
        response = post(client, "simplereenroll", body, environ=tls(issued.certificate))
        assert response.status_code == 200, response.get_data(as_text=True)
        device = devices.device(identity)
        assert device is not None and device.state == "migrated"


def test_map_with_rotate_through_the_command(app: Flask, runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    devices = Storage.open(gateway_of(app).storage.engine).devices
    add_device(devices, "kiosk-1")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(first))
    output = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(second))
    assert facts(output)["mapped"] == "0"
    assert facts(output)["left alone"] == "1 mapped before (--rotate gives them new credentials)"
    assert csv_rows(second) == []
    output = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--rotate", "--out", str(second), "--force")
    assert facts(output)["rotated"] == "1" and facts(output)["disabled"] == "1 previous bootstrap users"
    (old,), (new,) = csv_rows(first), csv_rows(second)
    users = Storage.open(devices.db.engine).est_users
    old_user, new_user = users.est_user(old["username"]), users.est_user(new["username"])
    assert old_user is not None and old_user.disabled_at is not None
    assert new_user is not None and new_user.disabled_at is None


def test_force_never_replaces_a_file_holding_credentials_not_used_yet(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    devices = Storage.open(gateway_of(app).storage.engine).devices
    add_device(devices, "kiosk-1")
    add_device(devices, "kiosk-2")
    out = tmp_path / "kiosks.json"
    run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(out))
    kept = out.read_bytes()
    refused = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(out), "--force", code=1)
    assert "--force: " in refused and "holds 2 bootstrap credentials not used yet" in refused
    assert out.read_bytes() == kept  # both passwords still where they are, and only there
    # One device enrolls with its credential, the other's is disabled: nothing left to lose.
    first, second = json.loads(kept)
    body = b64_csr(make_csr(ec_key(), subject(first["device_id"])))
    enrolled = post(client, "simpleenroll", body, headers=basic(first["username"], first["password"]))
    assert enrolled.status_code == 200, enrolled.get_data(as_text=True)
    refused = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(out), "--force", code=1)
    assert "holds 1 bootstrap credentials not used yet (the first for device 'kiosk-2')" in refused
    run(runner, data_dir, "est-user", "disable", second["username"])
    output = run(runner, data_dir, "migrate", "map", "--mode", "bootstrap", "--out", str(out), "--force")
    assert facts(output)["mapped"] == "0" and json.loads(out.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("precious", id="fail/not-an-export"),
        pytest.param('device_id,est_url,mode,username,password\n"kiosk-1,x', id="fail/broken-quote"),
        pytest.param("device_id,est_url,mode,username,password\nkiosk-1,u,magic,,\n", id="fail/unknown-mode"),
        pytest.param("device_id,est_url,mode,username,password\nkiosk-1,u\n", id="fail/short-row"),
    ],
)
def test_force_never_replaces_a_file_it_cannot_read(
    runner: CliRunner, data_dir: Path, tmp_path: Path, content: str
) -> None:
    out = tmp_path / "old.csv"
    out.write_text(content, encoding="utf-8")
    refused = run(runner, data_dir, "migrate", "map", "--out", str(out), "--force", code=1)
    assert "--force: " in refused and "is not an export file this command can read" in refused
    assert out.read_text(encoding="utf-8") == content


@pytest.mark.parametrize(
    ("name", "content", "rows"),
    [
        pytest.param("a.csv", "device_id,est_url,mode,username,password\nd1,u,certificate,,\n", 1, id="csv"),
        pytest.param("a.csv", "", 0, id="empty-csv"),
        pytest.param(
            "a.json", '[\n  {"device_id": "d1", "est_url": "u", "mode": "bootstrap", "username": "b"}\n]', 1, id="json"
        ),
        pytest.param("a.json", "", 0, id="empty-json"),
    ],
)
def test_read_export_reads_what_export_file_writes(tmp_path: Path, name: str, content: str, rows: int) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert len(read_export(path)) == rows


@pytest.mark.parametrize(
    ("name", "content", "cause"),
    [
        pytest.param("a.json", "[", "not JSON", id="fail/cut-json"),
        pytest.param("a.json", '{"device_id": "d1"}', "not a JSON array", id="fail/object"),
        pytest.param("a.json", '[{"device_id": 1, "mode": "certificate"}]', "row 1 names no device", id="fail/number"),
        pytest.param(
            "a.json", '[{"device_id": "d", "mode": "certificate", "username": 5}]', "not text", id="fail/type"
        ),
        pytest.param("a.csv", "a,b\n", "its header is not", id="fail/header"),
        pytest.param("a.csv", b"\xff\xfe".decode("latin-1"), "header", id="fail/bytes"),
    ],
)
def test_read_export_refuses_what_it_cannot_tell(tmp_path: Path, name: str, content: str, cause: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UnreadableExport, match=cause):
        read_export(path)


def test_map_refuses_an_unknown_group(runner: CliRunner, data_dir: Path) -> None:
    refused = run(runner, data_dir, "migrate", "map", "--group", "nosuch", code=1)
    assert "--group: no device is in group 'nosuch'" in refused


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--mode", "bootstrap"], "--out: bootstrap passwords are written only to a file", id="fail/no-out"
        ),
        pytest.param(["--out", "{tmp}/x.txt"], "--out: x.txt: the file name must end in .csv or .json", id="fail/ext"),
        pytest.param(["--out", "{tmp}/exists.csv"], "exists; give --force to replace it", id="fail/exists"),
        pytest.param(["--out", "{tmp}/nodir/x.csv"], "--out: cannot create", id="fail/no-dir"),
        pytest.param(["--label", "nope"], "--label: no profile 'nope' (have: default, tls-server)", id="fail/label"),
        pytest.param(["--group", "g" * 65], "--group: a group name has 1-64 characters", id="fail/group"),
        pytest.param(["--mode", "magic"], "Invalid value for '--mode'", id="fail/mode"),
        pytest.param(["--expires-days", "0"], "Invalid value for '--expires-days'", id="fail/expiry"),
    ],
)
def test_map_errors_name_the_option(
    runner: CliRunner, data_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "exists.csv").write_text("precious", encoding="utf-8")
    result = runner.invoke(
        main, ["migrate", "map", *(a.format(tmp=tmp_path) for a in args), "--data-dir", str(data_dir)]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert (tmp_path / "exists.csv").read_text(encoding="utf-8") == "precious"
