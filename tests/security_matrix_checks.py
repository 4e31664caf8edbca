"""The rows of tests/test_security_matrix.py, and how one is run and judged against `gateway serve`.

A Row names a principal, a protocol (the first part of its id), a profile (EST label or SCEP path),
an operation and what the request asks (Ask); and what must come of it: Issued, EstRefused,
ScepFailure (a signed CertRep FAILURE) or ScepNotServed (HTTP 404). `run_est` / `run_scep` send it
with the principal's credentials; `check_issued` / `check_refused` compare what came back, and what
the server stored and logged, with the expectation.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from est import cmc
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.client_messages import read_certs_only
from shared_ca.keys import PrivateKey
from tests import test_est_cmc as cmc_tests
from tests.security_matrix_support import (
    BOOTSTRAP_DEVICE,
    BOOTSTRAP_USER,
    PASSWORD,
    STATIC_CHALLENGE,
    STRICT_CHALLENGE,
    WIFI_CHALLENGE,
    Held,
    Ledger,
    World,
    cert_rep,
    csr_der,
    est_post,
    events_since,
    issued_for,
    issued_since,
    logged_messages,
    scep_message,
    scep_post,
)
from tests.support import multipart_parts
from tests.test_est_auth_matrix import Answer
from tests.test_serve import fetch

CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)
MAX_PUBLIC_MESSAGE = 160  # characters: a category, never a cause
INTERNALS = ("Traceback", ".py", "sqlalchemy", "sqlite", "Exception", "SELECT", "detail")
SECRETS = (PASSWORD, STATIC_CHALLENGE, WIFI_CHALLENGE, STRICT_CHALLENGE)


@dataclass(frozen=True)
class Ask:
    """What the request asks for; `held_key`: certify the presented certificate's own key."""

    subject: x509.Name
    dns: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    held_key: bool = False


@dataclass(frozen=True)
class Issued:
    """Allowed: issued under `profile` with exactly this subject, these SANs and this EKU."""

    profile: str
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...] = ()
    eku: tuple[ObjectIdentifier, ...] = CLIENT_AUTH


@dataclass(frozen=True)
class EstRefused:
    """Refused over EST: this HTTP status and exactly this text/plain body."""

    status: int
    message: str


@dataclass(frozen=True)
class ScepFailure:
    """Refused over SCEP: a signed CertRep FAILURE with this failInfo and exactly this failInfoText."""

    text: str
    fail_info: FailInfo = FailInfo.BAD_REQUEST


@dataclass(frozen=True)
class ScepNotServed:
    """HTTP 404: a profile SCEP does not serve."""

    message: str = "unknown SCEP profile"


Expect = Issued | EstRefused | ScepFailure | ScepNotServed


@dataclass(frozen=True)
class Row:
    """One cell of the matrix. `label` None is the default path (/.well-known/est/…, /scep)."""

    id: str
    principal: str
    label: str | None
    operation: str
    ask: Ask
    expect: Expect
    hidden: tuple[str, ...] = field(default=())  # more text the answer must not contain

    @property
    def protocol(self) -> str:
        return self.id.split("/", 1)[0]


@dataclass(frozen=True)
class Principal:
    """A row's principal as credentials: Basic, a TLS client or SCEP signer certificate, a challenge."""

    auth: tuple[str, str] | None = None
    held: Held | None = None
    challenge: str | None = None
    identities: tuple[str, ...] = ()  # who it is, which the answer must not name


def principal_of(world: World, row: Row) -> Principal:
    """The credentials of the row's principal (a certificate: the one of the row's protocol)."""
    device = world.held("est_device" if row.protocol == "est" else "scep_device")
    strict = world.held("strict_est" if row.protocol == "est" else "strict_scep")
    user = (row.principal, PASSWORD)
    principals = {
        "none": Principal(),
        "enroller": Principal(user, identities=("enroller",)),
        "wifi-user": Principal(user, identities=("wifi-user",)),
        "server-admin": Principal(user, identities=("server-admin",)),
        "bootstrap": Principal((BOOTSTRAP_USER, world.bootstrap_secret), identities=(BOOTSTRAP_USER, BOOTSTRAP_DEVICE)),
        "device-cert": Principal(held=device, identities=(device.serial,)),
        "device-cert+enroller": Principal(("enroller", PASSWORD), device, identities=(device.serial, "enroller")),
        "strict-cert": Principal(held=strict, identities=(strict.serial,)),
        "static": Principal(challenge=STATIC_CHALLENGE),
        "wifi-static": Principal(challenge=WIFI_CHALLENGE),
        "one-time": Principal(challenge=world.one_time_challenge, identities=(world.one_time_challenge,)),
    }
    return principals[row.principal]


@dataclass(frozen=True)
class Outcome:
    """What a row's request got: the answer, and the certificate it carries with the key certified."""

    answer: Answer
    text: str  # the client-visible refusal: EST body, SCEP failInfoText
    certificate: x509.Certificate | None = None
    certified: PrivateKey | None = None
    fail_info: FailInfo | None = None


def run_est(world: World, row: Row, who: Principal) -> Outcome:
    """Send the row's EST request over HTTPS and read what came back."""
    if row.ask.held_key and who.held is not None:
        key = who.held.key
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    der = csr_der(key, row.ask.subject, dns=row.ask.dns, emails=row.ask.emails)
    content_type = "application/pkcs10"
    if row.operation == "fullcmc":
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        content = cmc_tests.pki_data(cmc_tests.standard_controls(), [cmc_tests.tcr(1, der)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
        body = base64.b64encode(cmc_tests.sign(content, key, cmc_tests.sid_ski(ski)))
        content_type = cmc.FULL_CMC_REQUEST
    else:
        body = base64.encodebytes(der)
    client = who.held.files if who.held is not None else None
    answer = est_post(
        world, row.operation, body, label=row.label, auth=who.auth, client=client, content_type=content_type
    )
    if answer.status != 200:
        return Outcome(answer, answer.text.strip())
    if row.operation == "serverkeygen":
        (_, key_der), (_, certs_der) = multipart_parts(answer.headers["content-type"], answer.body)
        generated = load_der_private_key(key_der, password=None)
        assert isinstance(generated, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        (certificate,) = read_certs_only(certs_der)[0]
        return Outcome(answer, "", certificate, generated)
    if row.operation == "fullcmc":
        response = cmc.parse_pki_response(base64.b64decode(answer.body))
        assert [s.status for s in response.statuses] == [cmc.CmcStatus.SUCCESS], response.statuses
        return Outcome(answer, "", issued_for(response.certificates, key), key)
    assert answer.headers["content-type"].startswith("application/pkcs7-mime"), answer.headers
    (certificate,) = read_certs_only(base64.b64decode(answer.body))[0]
    return Outcome(answer, "", certificate, key)


def run_scep(world: World, row: Row, who: Principal) -> Outcome:
    """Send the row's pkiMessage to the plain-HTTP listener and read its CertRep (or HTTP error)."""
    key = who.held.key if row.ask.held_key and who.held is not None else rsa.generate_private_key(65537, 2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = csr_der(key, row.ask.subject, dns=row.ask.dns, emails=row.ask.emails, challenge=who.challenge)
    if who.held is not None:  # signed by the certificate it renews
        signer_key = who.held.key
        assert isinstance(signer_key, rsa.RSAPrivateKey)
        sent = scep_message(world, MessageType[row.operation], der, key=signer_key, signer=who.held.certificate)
    else:
        sent = scep_message(world, MessageType[row.operation], der, key=key)
    answer = scep_post(world, f"/scep/{row.label}" if row.label else "/scep", sent)
    if answer.status != 200:
        return Outcome(answer, answer.text.strip())
    reply = cert_rep(world, answer, sent)
    if reply.status is PkiStatus.SUCCESS:
        return Outcome(answer, "", issued_for(reply.certificates, key), key)
    assert reply.status is PkiStatus.FAILURE, reply
    return Outcome(answer, reply.fail_info_text or "", fail_info=reply.fail_info)


def sans_of(certificate: x509.Certificate) -> list[x509.GeneralName]:
    """The subjectAltNames of a certificate, in order; none when it has no such extension."""
    try:
        return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def check_issued(world: World, row: Row, before: Ledger, outcome: Outcome, expect: Issued, context: str) -> None:
    """Exactly the subject, SANs and EKU the rule allows, for the key asked, by our CA, recorded once."""
    certificate = outcome.certificate
    assert certificate is not None and outcome.certified is not None, f"{row.id}: nothing issued\n{context}"
    serial = format(certificate.serial_number, "x")
    assert certificate.subject == expect.subject, context
    got = sans_of(certificate)
    assert len(got) == len(set(got)) and set(got) == set(expect.sans), context
    eku = list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == list(expect.eku), f"EKU {eku}\n{context}"
    assert certificate.public_key() == outcome.certified.public_key(), f"another key was certified\n{context}"
    certificate.verify_directly_issued_by(world.ca)
    assert issued_since(world.store, before) == {serial: (expect.profile, row.protocol)}, context
    issued_events = [e for e in events_since(world.store, before) if e.outcome == "issued"]
    assert [e.serial_hex for e in issued_events] == [serial], context


def unknown_profile_answer(world: World, row: Row) -> Answer:
    """The answer at a profile that does not exist (refused before the body is read, so none is sent)."""
    if row.protocol == "est":
        return est_post(world, row.operation, b"", label="no-such-profile", auth=("enroller", PASSWORD))
    reply = fetch(world.server.http_port, "/scep/no-such-profile?operation=PKIOperation", method="POST")
    return Answer(reply.status, reply.headers, reply.body)


def check_refused(world: World, row: Row, who: Principal, before: Ledger, outcome: Outcome, context: str) -> None:
    """The exact refusal; nothing issued; one refusal event whose cause is logged but not answered; no leak."""
    expect = row.expect
    if isinstance(expect, EstRefused):
        assert (outcome.answer.status, outcome.text) == (expect.status, expect.message), context
        assert outcome.answer.headers.get("content-type", "").startswith("text/plain"), context
        kind = {401: "unauthorized", 403: "policy", 404: "transport"}[expect.status]
        wanted_events = [("est", row.operation, f"refused:{kind}")]
    elif isinstance(expect, ScepFailure):
        assert (outcome.fail_info, outcome.text) == (expect.fail_info, expect.text), context
        wanted_events = [("scep", row.operation, f"failure:{expect.fail_info.rfc_name}")]
    else:
        assert isinstance(expect, ScepNotServed)
        assert (outcome.answer.status, outcome.text) == (404, expect.message), context
        wanted_events = []  # the path names no SCEP service: nothing was read
        logged = f"SCEP request for unserved profile {row.label!r}"
        assert any(logged in message for message in logged_messages(world.server)), f"{row.id}: not logged"
    assert issued_since(world.store, before) == {}, f"{row.id}: issued although refused\n{context}"
    events = events_since(world.store, before)
    assert [(e.protocol, e.operation, e.outcome) for e in events] == wanted_events, context
    assert len(outcome.text) <= MAX_PUBLIC_MESSAGE and "\n" not in outcome.text, context
    forged = [line for line in world.server.stderr_text().splitlines() if line.startswith("INJECTED")]
    assert forged == [], f"{row.id}: a client's text forged a log line: {forged}"
    for leak in (*INTERNALS, *SECRETS, world.bootstrap_secret, *who.identities, *row.hidden):
        assert leak not in outcome.text, f"{row.id}: {leak!r} is in the answer {outcome.text!r}"
    if events and events[0].outcome != "refused:transport":  # a 404's cause is its text
        cause = str(events[0].detail.get("cause", ""))
        assert cause, context
        if cause != outcome.text:
            assert cause not in outcome.text, f"{row.id}: the cause {cause!r} reached the client"
        assert any(cause in message for message in logged_messages(world.server)), f"{row.id}: cause not logged"
    if outcome.answer.status == 404:  # a profile that exists but is not served answers like one that does not
        assert outcome.answer.body == unknown_profile_answer(world, row).body, context


def describe(world: World, row: Row, outcome: Outcome) -> str:
    """A failure's context: the row, what the client got, and the server's last records (access log aside)."""
    got = f"HTTP {outcome.answer.status} {outcome.text!r}"
    if outcome.fail_info is not None:
        got = f"CertRep FAILURE {outcome.fail_info.rfc_name} {outcome.text!r}"
    if outcome.certificate is not None:
        names = [str(n.value) for n in sans_of(outcome.certificate)]
        got += f", issued {outcome.certificate.subject.rfc4514_string()} with SANs {names}"
    records = [line for line in world.server.stderr_text().splitlines() if '"gateway.access"' not in line]
    return f"row {row.id}: {got}\n--- gateway serve log:\n" + "\n".join(records[-6:])
