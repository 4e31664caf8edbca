"""Who may obtain what: one authorization decision for every path that issues (DESIGN.md).

The protocols authenticate (a challenge, an EST user, a TLS client or SCEP signer certificate, an
administrator) and describe the caller as a `Principal`; they ask `Authorizer.authorize` for the
request, and issue exactly the `IssuancePolicy` it returns, or answer its refusal. They never decide
on their own. The rules, each enforced here and nowhere else:

1. A profile is requested over a protocol only when its `protocols` list it. A profile that makes
   server certificates (`tls-server`) lists none unless configured. The administrator may issue
   under any profile.
2. A secret opens only the profiles (EST labels) and the device it was made for: a profile's static
   challenge or webhook that profile; a one-time challenge its profile and device; an EST user its
   labels (none given: the default label only); a bootstrap user also only its device.
3. A certificate can only renew itself: the profile it was issued under (a legacy CA's certificate:
   the EST label its device was mapped to, else the default profile), the same subject, no
   subjectAltName it does not already hold (a renewal proper, RFC 7030 §4.2.2: exactly the ones it
   holds), a new key when the profile says so, inside the profile's renewal window. Over SCEP only
   where the profile allows SCEP renewal.
4. The profile's own rules (`shared_ca.policy`): key, subject and SAN filtering, subject shape and
   control characters; and, over SCEP, the migration's sunset and no-downgrade rules.

Checks that need no principal (`check_request`) come first, so a request the profile refuses anyway
spends no one-time challenge or credential use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography import x509

from shared_ca.csr import requested_sans
from shared_ca.errors import PolicyDenied
from shared_ca.identity import IdentityRule, certificate_sans
from shared_ca.keys import PublicKey, public_key_bytes
from shared_ca.policy import IssuancePolicy, authorize_request
from shared_ca.profiles import Profile
from shared_ca.storage.certificates import CertificateRecord
from shared_ca.storage.devices import ScepGate
from shared_ca.storage.est_users import EstUserRecord
from shared_ca.trust import RecognisedCertificate

ADMIN_PROTOCOL = "admin"


class DeviceStandings(Protocol):
    """The device storage the Authorizer reads (shared_ca.storage.devices): the migration model."""

    def mapped_label(self, identity: str) -> str | None: ...
    def scep_gate(self, identity: str) -> ScepGate | None: ...


class CredentialUses(Protocol):
    """The EST user storage `spending_use` writes (shared_ca.storage.est_users)."""

    def consume_use(self, user_id: int, now: dt.datetime) -> bool: ...
    def refund_use(self, user_id: int) -> None: ...


class PrincipalKind(enum.Enum):
    """How the caller proved who it is."""

    STATIC_CHALLENGE = "static"
    ONE_TIME_CHALLENGE = "one-time"
    WEBHOOK = "webhook"
    EST_USER = "basic"
    BOOTSTRAP_USER = "bootstrap"
    CERTIFICATE = "certificate"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what its credential opens.

    `profiles` is None only for the administrator (any profile). `device` is the one device identity
    the credential may enroll, when it is bound to one. `certificate` is the presented certificate
    of a certificate holder; `user` the EST user whose uses an issuance spends; `challenge_id` the
    one-time challenge whose use recording the request spends.
    """

    kind: PrincipalKind
    name: str
    profiles: frozenset[str] | None
    device: str | None = None
    certificate: RecognisedCertificate | None = None
    user: EstUserRecord | None = None
    challenge_id: int | None = None

    @classmethod
    def challenge(
        cls, kind: PrincipalKind, profile: str, device: str | None = None, *, challenge_id: int | None = None
    ) -> Principal:
        """A SCEP challenge (static, one-time or webhook) accepted for `profile` (and `device`)."""
        if kind not in (PrincipalKind.STATIC_CHALLENGE, PrincipalKind.ONE_TIME_CHALLENGE, PrincipalKind.WEBHOOK):
            raise ValueError(f"{kind} is not a challenge")
        if challenge_id is not None and kind is not PrincipalKind.ONE_TIME_CHALLENGE:
            raise ValueError(f"a {kind.value} challenge has no stored challenge to spend")
        return cls(kind, f"{kind.value} challenge", frozenset({profile}), device, challenge_id=challenge_id)

    @classmethod
    def admin(cls, actor: str) -> Principal:
        return cls(PrincipalKind.ADMIN, actor, None)

    def with_user(self, user: Principal) -> Principal:
        """A certificate holder that also logged in as an EST user: the certificate stays the identity,
        and the request must be allowed to both (the profiles both open, the device either binds)."""
        if self.profiles is None or user.profiles is None:
            raise ValueError("only a certificate holder logs in as an EST user as well")
        return replace(self, profiles=self.profiles & user.profiles, device=self.device or user.device, user=user.user)


@dataclass(frozen=True)
class CertificateRequest:
    """What is asked for: a subject, subjectAltNames and the public key to certify."""

    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    public_key: PublicKey

    @classmethod
    def from_csr(cls, csr: x509.CertificateSigningRequest, public_key: PublicKey | None = None) -> CertificateRequest:
        """The CSR's request; with `public_key`, for that key instead (server-side key generation)."""
        return cls(csr.subject, tuple(requested_sans(csr)), public_key or csr.public_key())


@dataclass(frozen=True)
class Authorization:
    """An allowed request: exactly what to sign, and the certificate it renews, if any."""

    principal: Principal
    policy: IssuancePolicy
    renewal_of: CertificateRecord | None = None


def _held(recognised: RecognisedCertificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(recognised.record.der)


class Authorizer:
    """The one authorization decision (module docstring). Immutable; one per worker."""

    def __init__(
        self,
        identity: IdentityRule,
        *,
        default_profile: str,
        clock: Callable[[], dt.datetime],
        devices: DeviceStandings | None = None,
        est_url: str = "",
    ) -> None:
        self.identity = identity
        self.default_profile = default_profile
        self.clock = clock
        self.devices = devices  # the migration model: legacy mappings, sunset and no-downgrade (None: none)
        self.est_url = est_url  # where a device refused by the sunset policy should go

    # -- principals -------------------------------------------------------------------------------

    def user_principal(self, user: EstUserRecord) -> Principal:
        """An EST user: its labels (none given: the default label only), and its device when bound."""
        labels = frozenset(user.labels) if user.labels else frozenset({self.default_profile})
        kind = PrincipalKind.BOOTSTRAP_USER if user.kind == "bootstrap" else PrincipalKind.EST_USER
        return Principal(kind, user.name, labels, user.device_identity, user=user)

    def certificate_principal(self, recognised: RecognisedCertificate) -> Principal:
        """The holder of a recognised certificate: it opens the one profile that certificate renews into."""
        return Principal(
            PrincipalKind.CERTIFICATE,
            recognised.record.subject,
            frozenset({self.renewal_profile(recognised)}),
            certificate=recognised,
        )

    def renewal_profile(self, recognised: RecognisedCertificate) -> str:
        """The profile a certificate renews into: the one it was issued under; for a legacy CA's
        certificate, the EST label its device was mapped to, else the default profile."""
        if not recognised.legacy:
            return recognised.record.profile
        device = self.identity.of_certificate(_held(recognised))
        label = self.devices.mapped_label(device) if self.devices is not None and device else None
        return label or self.default_profile

    # -- the decision -----------------------------------------------------------------------------

    def check_request(self, profile: Profile, protocol: str, request: CertificateRequest) -> IssuancePolicy:
        """The rules that need no principal: the profile is served over `protocol`, the request fits the
        profile, and (SCEP) the device's group has not sunset SCEP. PolicyDenied or AlgorithmNotAllowed."""
        if protocol != ADMIN_PROTOCOL and not profile.served_over(protocol):
            raise PolicyDenied(
                f"profile {profile.name!r} is not served over {protocol.upper()}",
                detail=f"profile {profile.name!r} lists protocols {list(profile.protocols)}",
            )
        now = self.clock()
        policy = authorize_request(profile, request.subject, list(request.sans), request.public_key, now)
        if protocol == "scep":
            self._check_scep_gate(self.identity.identify(request.subject, request.sans), now)
        return policy

    def authorize(
        self,
        principal: Principal | Callable[[], Principal],
        profile: Profile,
        protocol: str,
        request: CertificateRequest,
        *,
        renewal: bool = False,
    ) -> Authorization:
        """Whether `principal` may have what `request` asks under `profile` over `protocol`; `renewal`
        for a renewal proper (EST simplereenroll), which only a certificate may ask and whose names
        must equal the certificate's. Raises PolicyDenied (or AlgorithmNotAllowed) when not.

        `principal` may be a callable that authenticates: it is called only after the checks that need
        no principal passed, so a request refused anyway spends no one-time challenge."""
        if isinstance(principal, Principal) and principal.kind is PrincipalKind.ADMIN:
            protocol = ADMIN_PROTOCOL
        policy = self.check_request(profile, protocol, request)
        if not isinstance(principal, Principal):
            principal = principal()
        if principal.profiles is not None and profile.name not in principal.profiles:
            raise PolicyDenied(
                "this credential may not enroll under this profile",
                detail=f"{principal.kind.value} {principal.name!r} opens {sorted(principal.profiles)}, "
                f"not {profile.name!r}",
            )
        if principal.device is not None and self.identity.identify(request.subject, request.sans) != principal.device:
            raise PolicyDenied(
                "this credential enrolls only its own device",
                detail=f"{principal.kind.value} {principal.name!r} is bound to device {principal.device!r}",
            )
        if principal.certificate is None:
            if renewal:
                raise PolicyDenied(
                    "a renewal is authenticated by the certificate it renews",
                    detail=f"{principal.kind.value} {principal.name!r} asked for a renewal",
                )
            return Authorization(principal, policy)
        if protocol == "scep" and not profile.scep_renewal:
            raise PolicyDenied(f"profile {profile.name!r} does not renew over SCEP")
        self._check_renewal(principal.certificate, profile, request, exact_names=renewal)
        return Authorization(principal, policy, renewal_of=principal.certificate.record)

    def _check_renewal(
        self, recognised: RecognisedCertificate, profile: Profile, request: CertificateRequest, *, exact_names: bool
    ) -> None:
        held = _held(recognised)
        described = f"certificate {recognised.record.serial_hex} of issuer {recognised.issuer.name!r}"
        if request.subject != held.subject:
            raise PolicyDenied(
                "a certificate renews only itself: the subject must stay the same",
                detail=f"{described} is {held.subject.rfc4514_string()!r}, the request asks "
                f"{request.subject.rfc4514_string()!r}",
            )
        held_sans = certificate_sans(held)
        if exact_names:
            if set(request.sans) != set(held_sans):
                # RFC 7030 §4.2.2: Subject and SubjectAltName MUST equal the certificate being renewed.
                raise PolicyDenied("the subjectAltNames must equal those of the certificate renewed", detail=described)
        else:
            added = [name for name in request.sans if name not in held_sans]
            if added:
                raise PolicyDenied(
                    "a certificate renews only itself: no subjectAltName it does not already hold",
                    detail=f"{described} lacks {[str(n.value) for n in added]}",
                )
        if not profile.allow_key_reuse and public_key_bytes(request.public_key) == public_key_bytes(held.public_key()):
            raise PolicyDenied(f"profile {profile.name!r} requires a new key on renewal", detail=described)
        if profile.renewal_window_days:
            opens = held.not_valid_after_utc - dt.timedelta(days=profile.renewal_window_days)
            if self.clock() < opens:
                raise PolicyDenied(
                    f"too early to renew: profile {profile.name!r} renews within {profile.renewal_window_days} days "
                    "of expiry",
                    detail=f"{described} renews from {opens.isoformat()}",
                )

    def _check_scep_gate(self, device: str | None, now: dt.datetime) -> None:
        """The migration policy: no SCEP after the device group's sunset date, and none for a device
        that moved to EST, or was on EST from the start (native), unless its group allows the downgrade."""
        if self.devices is None or device is None:
            return
        gate = self.devices.scep_gate(device)
        if gate is None:
            return
        where = f" at {self.est_url}" if self.est_url else ""
        if gate.sunset_at is not None and gate.sunset_at <= now:
            raise PolicyDenied(
                f"SCEP enrollment ended on {gate.sunset_at:%Y-%m-%d} for this device: enroll over EST{where}",
                detail=f"device {device!r} of group {gate.group_name!r}: sunset {gate.sunset_at.isoformat()}",
            )
        if gate.state in ("migrated", "native") and not gate.allow_downgrade:
            moved = (
                "has moved to EST and may not enroll over SCEP again"
                if gate.state == "migrated"
                else "enrolls over EST and may not enroll over SCEP"
            )
            raise PolicyDenied(
                f"this device {moved}: use EST{where}",
                detail=f"device {device!r} is {gate.state}; group {gate.group_name!r} does not allow the downgrade",
            )

    # -- revocation -------------------------------------------------------------------------------

    def authorize_revocation(
        self,
        principal: Principal,
        serial_number: int,
        issuer_der: bytes,
        own_issuer_id: int,
        *,
        replaced_issuer_ids: Collection[int] = (),
    ) -> CertificateRecord:
        """The certificate a device may revoke (EST fullcmc revokeRequest, RFC 5272 §6.11): only the one it
        authenticated with, and only one this CA issued, or a CA it replaced in a rollover that still
        publishes its CRL (`replaced_issuer_ids`). Raises PolicyDenied."""
        recognised = principal.certificate
        if recognised is None:
            raise PolicyDenied(
                "a revocation is authenticated by the certificate it revokes",
                detail=f"{principal.kind.value} {principal.name!r} asked to revoke",
            )
        held = _held(recognised)
        if serial_number != held.serial_number or issuer_der != held.issuer.public_bytes():
            raise PolicyDenied(
                "a device may revoke only its own certificate",
                detail=f"{principal.name!r} asked to revoke serial {serial_number:x}",
            )
        if recognised.issuer.id != own_issuer_id and recognised.issuer.id not in replaced_issuer_ids:
            raise PolicyDenied(
                "certificates of an imported legacy CA are revoked at that CA, not here",
                detail=f"issuer {recognised.issuer.name!r}",
            )
        return recognised.record


@contextlib.contextmanager
def spending_use(users: CredentialUses, principal: Principal, now: dt.datetime) -> Iterator[None]:
    """Spend one use of the principal's EST user (if it has counted uses) for what the block issues;
    the use is given back when the block raises. PolicyDenied when none is left."""
    user = principal.user
    if user is None or user.uses_left is None:
        yield
        return
    if not users.consume_use(user.id, now):
        raise PolicyDenied("this credential has no uses left", detail=f"EST user {user.name!r} is used up")
    try:
        yield
    except BaseException:
        users.refund_use(user.id)
        raise
