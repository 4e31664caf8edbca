"""The approval queue (shared_ca.approval) where mutation testing found it untested (docs/security.md,
"Mutation testing"): what a queue row keeps of the request and of who asked, how approving
re-establishes a certificate holder (alone, or logged in as a user too) and a bound challenge, the
event and certificate an approval records, and a twin request answered by the first one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from cryptography import x509

from shared_ca.approval import ApprovalQueue, Held, principal_ref
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer, CertificateRequest, Principal, PrincipalKind
from shared_ca.errors import PolicyDenied
from shared_ca.identity import DEFAULT_IDENTITY
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.est_users import EstUserRecord
from shared_ca.storage.repositories import Storage
from shared_ca.trust import RecognisedCertificate
from tests.support import SettableClock, ec_key, storage_of, subject
from tests.test_authorization import DEFAULT, WIFI, World, ask, dns

MANUAL = replace(DEFAULT, approval="manual")
MANUAL_WIFI = replace(WIFI, approval="manual")
CLIENT = "192.0.2.7"


@dataclass
class Queue:
    """An approval queue over the test CA, and the stores it writes."""

    world: World
    queue: ApprovalQueue
    events: Enrollments

    def held(self, principal: Principal, request: CertificateRequest, *, profile: Profile = MANUAL,
             protocol: str = "est", device: str | None = "dev-1") -> Held:  # fmt: skip
        """`request` authorized for `principal` and queued, as the services queue it."""
        authorization = self.world.authorizer.authorize(principal, profile, protocol, request)
        new = self.queue.describe(
            protocol, authorization, request, reference=principal_ref(principal), device=device, client_address=CLIENT
        )
        event = EnrollmentEvent(
            protocol=protocol, operation="simpleenroll", outcome="pending", profile=profile.name, device_identity=device
        )
        return self.queue.hold(new, event)

    def user(self, name: str, **fields: object) -> EstUserRecord:
        return self.world.user(name, **fields)

    def certificate(self, cn: str, *sans: x509.GeneralName) -> RecognisedCertificate:
        return self.world.issue(subject(cn), sans=sans)


@pytest.fixture
def q(authority: CertificateAuthority, clock: SettableClock) -> Queue:
    engine = storage_of(authority).engine
    authorizer = Authorizer(DEFAULT_IDENTITY, default_profile="default", clock=clock)
    storage = Storage.open(engine)
    users = storage.est_users
    queue = ApprovalQueue(
        authority=authority,
        authorizer=authorizer,
        storage=storage,
        profiles={"default": MANUAL, "wifi": MANUAL_WIFI},
        clock=clock,
    )
    world = World(authority, authorizer, Storage.open(engine).devices, users, clock)
    return Queue(world, queue, Storage.open(engine).enrollments)


def test_approving_a_renewal_issues_what_was_asked_and_records_who_approved(q: Queue) -> None:
    held = q.certificate("dev-1", dns("dev-1.example"))
    principal = q.world.authorizer.certificate_principal(held)
    queued = q.held(principal, ask("dev-1", dns("dev-1.example")))
    assert (queued.record.renewal_of_id, queued.record.device_identity) == (held.record.id, "dev-1")
    assert (queued.record.client_address, queued.record.sans_der is not None) == (CLIENT, True)

    record = q.queue.approve(queued.record.id, actor="admin")
    assert record.subject == "CN=dev-1" and record.sans == ("dns:dev-1.example",)
    assert (record.renewed_from_id, record.requester, record.profile) == (held.record.id, CLIENT, "default")
    (approval, pending) = q.events.enrollment_events(device_identity="dev-1")
    assert pending.outcome == "pending"
    assert (approval.protocol, approval.operation, approval.outcome, approval.profile) == (
        "est", "approval", "issued", "default",
    )  # fmt: skip
    assert (approval.client_address, approval.challenge_kind, approval.serial_hex) == (
        CLIENT,
        "manual",
        record.serial_hex,
    )
    assert {k: approval.detail[k] for k in ("approved_by", "request", "principal")} == {
        "approved_by": "admin",
        "request": queued.record.id,
        "principal": "CN=dev-1",
    }


def test_a_certificate_holder_logged_in_as_a_user_is_approved_as_both(q: Queue) -> None:
    held = q.certificate("dev-1")
    user = q.user("counted", uses_left=2)
    principal = q.world.authorizer.certificate_principal(held).with_user(q.world.authorizer.user_principal(user))
    queued = q.held(principal, ask("dev-1"))
    record = q.queue.approve(queued.record.id, actor="admin")
    assert record.renewed_from_id == held.record.id  # still the certificate's renewal
    assert (q.world.users.est_user("counted") or user).uses_left == 1  # and the user's use is spent


def test_a_certificate_row_that_names_no_certificate_is_refused(q: Queue) -> None:
    q.certificate("dev-1")  # a valid certificate with the first id: it must not stand in for the missing one
    queued = q.held(q.world.authorizer.certificate_principal(q.certificate("dev-2")), ask("dev-2"))
    asked = ask("dev-1")
    authorization = q.world.authorizer.authorize(Principal.admin("t"), MANUAL, "est", asked)
    described = q.queue.describe("est", authorization, asked, reference="cert:x", device="dev-1", client_address=None)
    orphan = replace(described, principal_kind="certificate", principal_name="CN=dev-1", renewal_of_id=None)
    row = q.queue.hold(orphan, EnrollmentEvent(protocol="est", operation="simpleenroll", outcome="pending")).record
    with pytest.raises(PolicyDenied) as raised:
        q.queue.approve(row.id, actor="admin")
    assert raised.value.public_message == f"the certificate that asked for request {row.id} is gone"
    assert q.queue.approve(queued.record.id, actor="admin").renewed_from_id is not None


def test_a_used_up_user_is_refused_where_the_use_is_spent(q: Queue) -> None:
    user = q.user("once", uses_left=1)
    queued = q.held(q.world.authorizer.user_principal(user), ask("dev-1"))
    assert q.world.users.consume_use(user.id, q.world.clock())
    with pytest.raises(PolicyDenied) as raised:
        q.queue.approve(queued.record.id, actor="admin")
    assert raised.value.public_message == "this credential has no uses left"


def test_a_challenge_stays_bound_to_the_device_its_row_names(q: Queue) -> None:
    challenge = Principal.challenge(PrincipalKind.ONE_TIME_CHALLENGE, "default")
    queued = q.held(challenge, ask("dev-1"), protocol="scep", device="dev-2")
    with pytest.raises(PolicyDenied) as raised:
        q.queue.approve(queued.record.id, actor="admin")
    assert raised.value.public_message == "this credential enrolls only its own device"
    bound = q.held(challenge, ask("dev-3"), protocol="scep", device="dev-3")
    assert q.queue.approve(bound.record.id, actor="admin").subject == "CN=dev-3"


def test_a_twin_request_is_answered_by_the_first(q: Queue) -> None:
    principal = q.world.authorizer.user_principal(q.user("enroller"))
    request = ask("dev-1")
    first = q.held(principal, request)
    twin = q.held(principal, request)
    assert first.new and not twin.new
    assert twin.record.id == first.record.id


def test_requests_that_differ_only_in_their_names_are_queued_apart(q: Queue) -> None:
    principal = q.world.authorizer.user_principal(q.user("enroller"))
    key = ec_key()
    one = q.held(principal, ask("dev-1", dns("a.example"), key=key))
    other = q.held(principal, ask("dev-1", dns("b.example"), key=key))
    assert one.new and other.new and one.record.id != other.record.id


def test_pending_lists_one_profile_when_asked(q: Queue) -> None:
    default = q.held(Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "default"), ask("dev-1"), protocol="scep")
    wifi = q.held(Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "wifi"), ask("dev-2"), profile=MANUAL_WIFI,
                  protocol="scep")  # fmt: skip
    assert [r.id for r in q.queue.pending(profile="wifi")] == [wifi.record.id]
    assert [r.id for r in q.queue.pending()] == [default.record.id, wifi.record.id]


def test_queue_rows_of_users_keep_the_user(q: Queue) -> None:
    user = q.user("labelled", labels=("wifi",))
    queued = q.held(q.world.authorizer.user_principal(user), ask("dev-1"), profile=MANUAL_WIFI)
    assert (queued.record.est_user_id, queued.record.principal_kind, queued.record.principal_name) == (
        user.id, "basic", "labelled",
    )  # fmt: skip
