"""The authorization matrix of docs/security.md ("Who may obtain what"), through `gateway serve`.

One row: a principal, a protocol, a profile (EST label or SCEP path), an operation and a request
→ issued, with exactly the subject, subjectAltNames and extended key usage the rule allows; or the
exact refusal: EST status and text, a signed SCEP CertRep FAILURE (failInfo, failInfoText), or
HTTP 404 for a profile SCEP does not serve. Every refused row also checks that nothing was issued,
that the refusal's cause reached the enrollment event and the server log but not the client, and
that no secret or identity of the principal is in the answer. The regression rows of the review's
findings are marked `finding` in their id.

The rows share one server (tests/security_matrix_support.py builds it). Rows of a one-use
credential (the bootstrap user, the one-time challenge) list their refusals before their issuance,
and pytest runs them in that order. Devices renewed over SCEP are never enrolled over EST (an EST
issuance moves a device to `migrated`, and SCEP then refuses it by the no-downgrade rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared_ca.storage.repositories import Storage
from tests.security_matrix_checks import (
    SERVER_AUTH,
    Ask,
    EstRefused,
    Issued,
    Row,
    ScepFailure,
    ScepNotServed,
    check_issued,
    check_refused,
    describe,
    principal_of,
    run_est,
    run_scep,
    sans_of,
)
from tests.security_matrix_support import (
    BOOTSTRAP_DEVICE,
    OTC_DEVICE,
    World,
    build_world,
    close_world,
    csr_der,
    issued_since,
    ledger,
    name,
)
from tests.test_serve import gateway_command

pytestmark = pytest.mark.slow


# -- the rows ---------------------------------------------------------------------------------------


def dns(*names: str) -> tuple[x509.GeneralName, ...]:
    """DNS subjectAltNames."""
    return tuple(x509.DNSName(n) for n in names)


DEV1 = Ask(name("dev-1"), dns=("dev-1.example",))
DEV1_ISSUED = Issued("default", name("dev-1"), dns("dev-1.example"))
SCEP_DEV = Ask(name("scep-dev"), dns=("scep-dev.example",))
SCEP_DEV_ISSUED = Issued("default", name("scep-dev"), dns("scep-dev.example"))
ADDED_DNS = "gateway.example.com"
ADDED_EMAIL = "administrator@corp.example"
REPEATED_CN = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c) for c in ("twice-a", "twice-b")])
NEWLINE_CN = name("dev\nINJECTED")
MULTI_VALUED = x509.Name(
    [
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, "multi"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp")]
        )
    ]
)

WRONG_PROFILE = "this credential may not enroll under this profile"
NO_EST_LABEL = EstRefused(404, "unknown EST label")
NO_ADDED_SAN = "a certificate renews only itself: no subjectAltName it does not already hold"
SAME_SUBJECT = "a certificate renews only itself: the subject must stay the same"
SAME_SANS = "the subjectAltNames must equal those of the certificate renewed"
BAD_CHALLENGE = "the challenge password is not valid"
NEW_KEY = "profile 'strict' requires a new key on renewal"
SHAPES = [
    ("repeated-cn", REPEATED_CN, "the subject names CN more than once (profile 'default')"),
    ("newline-cn", NEWLINE_CN, "subject attribute CN contains a control character"),
    ("multi-valued-rdn", MULTI_VALUED, "the subject has a multi-valued RDN, which profile 'default' does not allow"),
]

EST_ROWS = [
    Row(
        "est/enroller/default/allowed",
        "enroller",
        None,
        "simpleenroll",
        Ask(name("laptop-1")),
        Issued("default", name("laptop-1")),
    ),
    Row(
        "est/enroller/default/dns-san/allowed",
        "enroller",
        None,
        "simpleenroll",
        Ask(name("printer-1"), dns=("printer-1.corp.example",)),
        Issued("default", name("printer-1"), dns("printer-1.corp.example")),
    ),
    Row(
        "est/enroller/wifi/refused",
        "enroller",
        "wifi",
        "simpleenroll",
        Ask(name("laptop-2")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/enroller/tls-server/finding/refused",
        "enroller",
        "tls-server",
        "simpleenroll",
        Ask(name("gateway.example.com")),
        NO_EST_LABEL,
    ),
    Row(
        "est/enroller/servers/refused",
        "enroller",
        "servers",
        "simpleenroll",
        Ask(name("web.corp.example")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/enroller/simplereenroll/refused",
        "enroller",
        None,
        "simplereenroll",
        Ask(name("laptop-1")),
        EstRefused(403, "a renewal is authenticated by the certificate it renews"),
    ),
    *(
        Row(f"est/enroller/{shape}/refused", "enroller", None, "simpleenroll", Ask(subject), EstRefused(403, text))
        for shape, subject, text in SHAPES
    ),
    Row(
        "est/none/default/refused",
        "none",
        None,
        "simpleenroll",
        Ask(name("anonymous")),
        EstRefused(401, "authentication required"),
    ),
    Row(
        "est/wifi-user/wifi/allowed",
        "wifi-user",
        "wifi",
        "simpleenroll",
        Ask(name("wifi-laptop")),
        Issued("wifi", name("wifi-laptop")),
    ),
    Row(
        "est/wifi-user/default/refused",
        "wifi-user",
        None,
        "simpleenroll",
        Ask(name("wifi-laptop")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/wifi-user/servers/refused",
        "wifi-user",
        "servers",
        "simpleenroll",
        Ask(name("wifi.corp.example")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/server-admin/servers/allowed",
        "server-admin",
        "servers",
        "simpleenroll",
        Ask(name("web.corp.example")),
        Issued("servers", name("web.corp.example"), dns("web.corp.example"), SERVER_AUTH),
    ),
    Row(
        "est/server-admin/servers/extra-dns/allowed",
        "server-admin",
        "servers",
        "simpleenroll",
        Ask(name("api.corp.example"), dns=("api2.corp.example",)),
        Issued("servers", name("api.corp.example"), dns("api.corp.example", "api2.corp.example"), SERVER_AUTH),
    ),
    Row(
        "est/server-admin/default/refused",
        "server-admin",
        None,
        "simpleenroll",
        Ask(name("web.corp.example")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/server-admin/tls-server/refused",
        "server-admin",
        "tls-server",
        "simpleenroll",
        Ask(name("web.corp.example")),
        NO_EST_LABEL,
    ),
    # One use: the refusals first (a refused request spends none).
    Row(
        "est/bootstrap/other-cn/refused",
        "bootstrap",
        None,
        "simpleenroll",
        Ask(name("boot-other")),
        EstRefused(403, "this credential enrolls only its own device"),
    ),
    Row(
        "est/bootstrap/wifi/refused",
        "bootstrap",
        "wifi",
        "simpleenroll",
        Ask(name(BOOTSTRAP_DEVICE)),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/bootstrap/own-device/allowed",
        "bootstrap",
        None,
        "simpleenroll",
        Ask(name(BOOTSTRAP_DEVICE)),
        Issued("default", name(BOOTSTRAP_DEVICE)),
    ),
    # The certificate CN=dev-1 (DNS dev-1.example) renews itself, and nothing else.
    Row("est/device-cert/same-names/allowed", "device-cert", None, "simpleenroll", DEV1, DEV1_ISSUED),
    Row(
        "est/device-cert/add-san/refused",
        "device-cert",
        None,
        "simpleenroll",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    Row(
        "est/device-cert/add-email-san/refused",
        "device-cert",
        None,
        "simpleenroll",
        Ask(name("dev-1"), dns=("dev-1.example",), emails=(ADDED_EMAIL,)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    Row(
        "est/device-cert/add-dns-and-email-san/finding/refused",
        "device-cert",
        None,
        "simpleenroll",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS), emails=(ADDED_EMAIL,)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    Row(
        "est/device-cert/other-cn/refused",
        "device-cert",
        None,
        "simpleenroll",
        Ask(name("dev-2"), dns=("dev-1.example",)),
        EstRefused(403, SAME_SUBJECT),
    ),
    Row(
        "est/device-cert/servers/refused",
        "device-cert",
        "servers",
        "simpleenroll",
        DEV1,
        EstRefused(403, WRONG_PROFILE),
    ),
    Row("est/device-cert/tls-server/finding/refused", "device-cert", "tls-server", "simpleenroll", DEV1, NO_EST_LABEL),
    Row("est/device-cert/wifi/refused", "device-cert", "wifi", "simpleenroll", DEV1, EstRefused(403, WRONG_PROFILE)),
    Row(
        "est/device-cert+enroller/add-san/refused",
        "device-cert+enroller",
        None,
        "simpleenroll",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    Row("est/device-cert/simplereenroll/allowed", "device-cert", None, "simplereenroll", DEV1, DEV1_ISSUED),
    Row(
        "est/device-cert/simplereenroll/cn-changed/refused",
        "device-cert",
        None,
        "simplereenroll",
        Ask(name("dev-2"), dns=("dev-1.example",)),
        EstRefused(403, SAME_SUBJECT),
    ),
    Row(
        "est/device-cert/simplereenroll/add-san/refused",
        "device-cert",
        None,
        "simplereenroll",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS)),
        EstRefused(403, SAME_SANS),
    ),
    Row(
        "est/device-cert/simplereenroll/drop-san/refused",
        "device-cert",
        None,
        "simplereenroll",
        Ask(name("dev-1")),
        EstRefused(403, SAME_SANS),
    ),
    Row("est/device-cert/serverkeygen/allowed", "device-cert", None, "serverkeygen", DEV1, DEV1_ISSUED),
    Row(
        "est/device-cert/serverkeygen/add-san/refused",
        "device-cert",
        None,
        "serverkeygen",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    Row("est/device-cert/fullcmc/allowed", "device-cert", None, "fullcmc", DEV1, DEV1_ISSUED),
    Row(
        "est/device-cert/fullcmc/add-san/refused",
        "device-cert",
        None,
        "fullcmc",
        Ask(name("dev-1"), dns=("dev-1.example", ADDED_DNS)),
        EstRefused(403, NO_ADDED_SAN),
    ),
    # A certificate of `strict` (allow_key_reuse = false), obtained over SCEP, renewing over EST.
    Row(
        "est/strict-cert/simplereenroll/same-key/refused",
        "strict-cert",
        "strict",
        "simplereenroll",
        Ask(name("strict-est"), held_key=True),
        EstRefused(403, NEW_KEY),
    ),
    Row(
        "est/strict-cert/default/refused",
        "strict-cert",
        None,
        "simplereenroll",
        Ask(name("strict-est")),
        EstRefused(403, WRONG_PROFILE),
    ),
    Row(
        "est/strict-cert/simplereenroll/new-key/allowed",
        "strict-cert",
        "strict",
        "simplereenroll",
        Ask(name("strict-est")),
        Issued("strict", name("strict-est")),
    ),
]

SCEP_ROWS = [
    Row(
        "scep/static/default/allowed",
        "static",
        None,
        "PKCSReq",
        Ask(name("scep-laptop")),
        Issued("default", name("scep-laptop")),
    ),
    Row(
        "scep/static/tls-server/refused",
        "static",
        "tls-server",
        "PKCSReq",
        Ask(name("gateway.example.com")),
        ScepNotServed(),
    ),
    Row("scep/static/servers/refused", "static", "servers", "PKCSReq", Ask(name("web.corp.example")), ScepNotServed()),
    Row("scep/static/wifi/refused", "static", "wifi", "PKCSReq", Ask(name("scep-wifi")), ScepFailure(BAD_CHALLENGE)),
    *(
        Row(f"scep/static/{shape}/refused", "static", None, "PKCSReq", Ask(subject), ScepFailure(text))
        for shape, subject, text in SHAPES
    ),
    Row(
        "scep/wifi-static/wifi/allowed",
        "wifi-static",
        "wifi",
        "PKCSReq",
        Ask(name("scep-wifi")),
        Issued("wifi", name("scep-wifi")),
    ),
    Row(
        "scep/wifi-static/default/refused",
        "wifi-static",
        None,
        "PKCSReq",
        Ask(name("scep-wifi")),
        ScepFailure(BAD_CHALLENGE),
    ),
    Row("scep/none/default/refused", "none", None, "PKCSReq", Ask(name("scep-anonymous")), ScepFailure(BAD_CHALLENGE)),
    # One use: the refusals first.
    Row(
        "scep/one-time/other-cn/refused",
        "one-time",
        None,
        "PKCSReq",
        Ask(name("other")),
        ScepFailure(BAD_CHALLENGE),
        hidden=(OTC_DEVICE,),
    ),
    Row("scep/one-time/wifi/refused", "one-time", "wifi", "PKCSReq", Ask(name(OTC_DEVICE)), ScepFailure(BAD_CHALLENGE)),
    Row(
        "scep/one-time/own-device/allowed",
        "one-time",
        None,
        "PKCSReq",
        Ask(name(OTC_DEVICE)),
        Issued("default", name(OTC_DEVICE)),
    ),
    # The certificate CN=scep-dev (DNS scep-dev.example) renews itself, and nothing else.
    Row("scep/device-cert/renewal/allowed", "device-cert", None, "RenewalReq", SCEP_DEV, SCEP_DEV_ISSUED),
    Row(
        "scep/device-cert/renewal/same-key/allowed",
        "device-cert",
        None,
        "RenewalReq",
        Ask(name("scep-dev"), dns=("scep-dev.example",), held_key=True),
        SCEP_DEV_ISSUED,
    ),
    Row(
        "scep/device-cert/renewal/wifi/refused",
        "device-cert",
        "wifi",
        "RenewalReq",
        SCEP_DEV,
        ScepFailure(WRONG_PROFILE),
    ),
    Row(
        "scep/device-cert/renewal/cn-changed/refused",
        "device-cert",
        None,
        "RenewalReq",
        Ask(name("scep-dev-2"), dns=("scep-dev.example",)),
        ScepFailure(SAME_SUBJECT),
    ),
    Row(
        "scep/device-cert/renewal/add-san/refused",
        "device-cert",
        None,
        "RenewalReq",
        Ask(name("scep-dev"), dns=("scep-dev.example", ADDED_DNS)),
        ScepFailure(NO_ADDED_SAN),
    ),
    Row(
        "scep/device-cert/renewal/add-email-san/refused",
        "device-cert",
        None,
        "RenewalReq",
        Ask(name("scep-dev"), dns=("scep-dev.example",), emails=(ADDED_EMAIL,)),
        ScepFailure(NO_ADDED_SAN),
    ),
    Row(
        "scep/device-cert/renewal/tls-server/finding/refused",
        "device-cert",
        "tls-server",
        "RenewalReq",
        SCEP_DEV,
        ScepNotServed(),
    ),
    Row("scep/device-cert/pkcsreq/allowed", "device-cert", None, "PKCSReq", SCEP_DEV, SCEP_DEV_ISSUED),
    Row(
        "scep/device-cert/pkcsreq/add-san/refused",
        "device-cert",
        None,
        "PKCSReq",
        Ask(name("scep-dev"), dns=("scep-dev.example", ADDED_DNS)),
        ScepFailure(NO_ADDED_SAN),
    ),
    Row(
        "scep/device-cert/pkcsreq/tls-server/finding/refused",
        "device-cert",
        "tls-server",
        "PKCSReq",
        SCEP_DEV,
        ScepNotServed(),
    ),
    # A certificate of `strict` (allow_key_reuse = false): SCEP once issued where EST refused.
    Row(
        "scep/strict-cert/renewal/same-key/finding/refused",
        "strict-cert",
        "strict",
        "RenewalReq",
        Ask(name("strict-scep"), held_key=True),
        ScepFailure(NEW_KEY),
    ),
    Row(
        "scep/strict-cert/pkcsreq/same-key/finding/refused",
        "strict-cert",
        "strict",
        "PKCSReq",
        Ask(name("strict-scep"), held_key=True),
        ScepFailure(NEW_KEY),
    ),
    Row(
        "scep/strict-cert/renewal/default/refused",
        "strict-cert",
        None,
        "RenewalReq",
        Ask(name("strict-scep")),
        ScepFailure(WRONG_PROFILE),
    ),
    Row(
        "scep/strict-cert/renewal/new-key/allowed",
        "strict-cert",
        "strict",
        "RenewalReq",
        Ask(name("strict-scep")),
        Issued("strict", name("strict-scep")),
    ),
]


ROWS = [pytest.param(row, id=row.id) for row in (*EST_ROWS, *SCEP_ROWS)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = build_world(tmp_path_factory.mktemp("security-matrix"))
    try:
        yield built
    finally:
        close_world(built)


@pytest.mark.parametrize("row", ROWS)
def test_matrix(world: World, row: Row) -> None:
    """One row: what the principal asks of the real server, and what must come of it."""
    who = principal_of(world, row)
    before = ledger(world.store)
    outcome = run_est(world, row, who) if row.protocol == "est" else run_scep(world, row, who)
    context = describe(world, row, outcome)
    if isinstance(row.expect, Issued):
        check_issued(world, row, before, outcome, row.expect, context)
    else:
        check_refused(world, row, who, before, outcome, context)


# -- the command line -------------------------------------------------------------------------------


def test_est_user_for_tls_server_is_refused_by_the_cli(world: World) -> None:
    """est/cli/label-tls-server/finding/refused: `est-user add --label tls-server` (build_world ran it)."""
    refused = world.label_refusal
    assert refused.returncode == 1, refused
    assert "Error: --label: profile 'tls-server' is not served over EST" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert Storage.open(world.store.engine).est_users.est_user("tls-admin") is None


def scep_renew(world: World, url_path: str, out: Path) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """`gateway client scep renew --url http://HOST/<url_path> --key dev.key --cert dev.pem`: (exit status, stderr, what
    it issued) for the SCEP-issued CN=scep-dev."""
    held = world.held("scep_device")
    before = ledger(world.store)
    done = gateway_command(
        "client",
        "scep",
        "renew",
        "--url",
        f"http://127.0.0.1:{world.server.http_port}{url_path}",
        "--key",
        str(held.files[1]),
        "--cert",
        str(held.files[0]),
        "--out",
        str(out),
    )
    return done.returncode, done.stderr, issued_since(world.store, before)


def test_scep_renew_cli_at_tls_server_is_refused(world: World) -> None:
    """scep/cli/renew-tls-server/finding/refused: the finding's exact command exits non-zero, issues nothing."""
    out = world.workdir / "renewed-tls-server.pem"
    code, stderr, issued = scep_renew(world, "/scep/tls-server", out)
    assert code != 0 and issued == {}, (code, stderr, issued)
    assert stderr.startswith("Error: ") and "Traceback" not in stderr, stderr
    assert not out.exists()


def test_scep_renew_cli_at_its_own_profile_renews(world: World) -> None:
    """scep/cli/renew-default/allowed: the same command at /scep renews (so the refusal above is the path's)."""
    out = world.workdir / "renewed-default.pem"
    code, stderr, issued = scep_renew(world, "/scep", out)
    assert code == 0, stderr
    renewed = x509.load_pem_x509_certificate(out.read_bytes())
    assert issued == {format(renewed.serial_number, "x"): ("default", "scep")}
    assert renewed.subject == name("scep-dev") and sans_of(renewed) == list(dns("scep-dev.example"))


def test_administrator_issues_under_tls_server(world: World) -> None:
    """admin/cli/tls-server/allowed: `gateway cert issue` may use any profile, with the profile's rules."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr_file, out = world.workdir / "admin.csr", world.workdir / "admin.pem"
    csr_file.write_bytes(csr_der(key, name("gateway.example.com")))
    before = ledger(world.store)
    done = gateway_command(
        "cert",
        "issue",
        "--csr",
        str(csr_file),
        "--profile",
        "tls-server",
        "--out",
        str(out),
        "--data-dir",
        str(world.server.data_dir),
    )
    assert done.returncode == 0, done.stderr
    issued = x509.load_pem_x509_certificate(out.read_bytes())
    assert issued.subject == name("gateway.example.com")
    assert sans_of(issued) == list(dns("gateway.example.com"))
    assert list(issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == list(SERVER_AUTH)
    (row,) = issued_since(world.store, before).values()
    assert row[0] == "tls-server", row
