"""EST /serverkeygen (RFC 7030 §4.4): the gateway makes the key; key and certificate go back in one reply.

What the client asks for (`key_request`: the key bare or encrypted, and to which key), the key made
for it (`generate_key`) and the operation (`ServerKeygen`); how the key travels is est.key_delivery.
A generated key is never stored, so this operation is neither deferred nor queued for approval.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from est import key_delivery, wire
from est.events import EventLog
from est.intake import Intake
from est.issuance import Issuance
from est.request import EstConnection, EstReply, EstRequest
from est.wire import EstWireError
from shared_ca.authorization import Authorizer, CertificateRequest
from shared_ca.errors import CAError, InvalidRequest, PolicyDenied
from shared_ca.keys import PrivateKey, PublicKey
from shared_ca.profiles import CURVES, Profile

_CURVE_BY_CRYPTOGRAPHY_NAME = {name: label for label, name in CURVES.items()}
_CURVE_CLASSES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


class KeyProtection(enum.StrEnum):
    """How the client asked for the generated key to be encrypted (RFC 7030 §4.4.1): the CSR attribute's OID."""

    SYMMETRIC = "1.2.840.113549.1.9.16.2.37"
    """id-aa-decryptKeyID (RFC 4108 §2.2.5, RFC 7030 §4.4.1.1): names a symmetric key the client and
    the server share; the key is enveloped to it in a KEKRecipientInfo."""
    ASYMMETRIC = "1.2.840.113549.1.9.16.2.54"
    """id-aa-asymmDecryptKeyID (RFC 7030 §4.4.1.2): the subject key identifier of the client's
    certificate whose public key the private key is to be encrypted to."""


@dataclasses.dataclass(frozen=True)
class KeyEncryptionRequest:
    """The client's request for an encrypted key: which kind, and the key identifier it named."""

    protection: KeyProtection
    key_identifier: bytes

    @property
    def asymmetric(self) -> bool:
        """True for an AsymmetricDecryptKeyIdentifier (encrypt to a certificate), False for a KEK."""
        return self.protection is KeyProtection.ASYMMETRIC


class _UndecodedAttribute(core.Sequence):  # type: ignore[misc]
    _fields = [("type", core.ObjectIdentifier), ("values", core.Any)]


class _CertificationRequestInfo(core.Sequence):  # type: ignore[misc]
    """RFC 2986 §4.1, declared only as far as key_request reads it: each attribute's values stay undecoded."""

    _fields = [
        ("version", core.Integer),
        ("subject", core.Any),
        ("subject_pk_info", core.Any),
        ("attributes", core.SetOf, {"implicit": 0, "optional": True, "spec": _UndecodedAttribute}),
    ]


class _CertificationRequest(core.Sequence):  # type: ignore[misc]
    _fields = [("info", _CertificationRequestInfo), ("signature_algorithm", core.Any), ("signature", core.Any)]


class _KeyIdentifierAttribute(core.Sequence):  # type: ignore[misc]
    """Attribute ::= SEQUENCE { type OID, values SET OF OCTET STRING } for both RFC 7030 §4.4.1 attributes."""

    _fields = [("type", core.ObjectIdentifier), ("values", core.SetOf, {"spec": core.OctetString})]


# --- the request -------------------------------------------------------------------------------


def key_request(csr_der: bytes) -> KeyEncryptionRequest | None:
    """The DecryptKeyIdentifier or AsymmetricDecryptKeyIdentifier the CSR carries; None for neither.

    Only these two attributes are decoded, each on its own: other attributes (certmonger's BMPString
    friendlyName, say) are skipped undecoded. EstWireError when the CSR cannot be walked, when one of
    them is malformed (not one non-empty OCTET STRING), repeated, or when both are present.
    """
    try:
        attributes = _CertificationRequest.load(csr_der, strict=True)["info"]["attributes"]
        attributes = [] if isinstance(attributes, core.Void) else list(attributes)
    except (ValueError, TypeError) as exc:
        raise EstWireError("the request is not a PKCS#10 certificate request", detail=str(exc)) from exc
    found: dict[KeyProtection, bytes] = {}
    for attribute in attributes:
        try:
            oid: str = attribute["type"].dotted
        except (ValueError, TypeError) as exc:
            raise EstWireError("the CSR has a malformed attribute", detail=str(exc)) from exc
        if oid not in {p.value for p in KeyProtection}:
            continue
        protection = KeyProtection(oid)
        if protection in found:
            raise EstWireError(f"the CSR carries the attribute {oid} more than once")
        found[protection] = _key_identifier(protection, attribute.dump())
    if len(found) > 1:
        raise EstWireError("the CSR asks for both symmetric and asymmetric key encryption; send one")
    return next((KeyEncryptionRequest(p, identifier) for p, identifier in found.items()), None)


def _key_identifier(protection: KeyProtection, attribute_der: bytes) -> bytes:
    name = "DecryptKeyIdentifier" if protection is KeyProtection.SYMMETRIC else "AsymmetricDecryptKeyIdentifier"
    try:
        values = _KeyIdentifierAttribute.load(attribute_der, strict=True)["values"]
        identifiers = [value.native for value in values]
    except (ValueError, TypeError) as exc:
        raise EstWireError(f"the CSR's {name} is not an OCTET STRING", detail=str(exc)) from exc
    if len(identifiers) != 1:
        raise EstWireError(f"the CSR's {name} must have exactly one value, it has {len(identifiers)}")
    if not identifiers[0]:
        raise EstWireError(f"the CSR's {name} is empty")
    identifier: bytes = identifiers[0]
    return identifier


# --- the key -----------------------------------------------------------------------------------


def generate_key(requested: PublicKey, profile: Profile) -> PrivateKey:
    """A new private key like `requested` (the CSR's public key) when `profile` allows that type and
    size, otherwise the profile's default: its first key type (RSA of max(2048, rsa_min_bits) bits, EC
    on its first curve, or Ed25519).

    RFC 7030 §4.4.1 has the server ignore the CSR's key, so here it is only a hint and a disallowed one
    is never refused: a service that wants to refuse calls `profile.check_public_key(requested)` first.
    The new key always passes `profile.check_public_key`.
    """
    key: PrivateKey
    if isinstance(requested, rsa.RSAPublicKey) and _allowed(requested, profile):
        key = rsa.generate_private_key(public_exponent=65537, key_size=requested.key_size)
    elif isinstance(requested, ec.EllipticCurvePublicKey) and _allowed(requested, profile):
        key = ec.generate_private_key(_CURVE_CLASSES[_CURVE_BY_CRYPTOGRAPHY_NAME[requested.curve.name]]())
    elif isinstance(requested, ed25519.Ed25519PublicKey) and _allowed(requested, profile):
        key = ed25519.Ed25519PrivateKey.generate()
    elif profile.key_types[0] == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=max(2048, profile.rsa_min_bits))
    elif profile.key_types[0] == "ec":
        key = ec.generate_private_key(_CURVE_CLASSES[profile.ec_curves[0]]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    profile.check_public_key(key.public_key())
    return key


def _allowed(requested: PublicKey, profile: Profile) -> bool:
    try:
        profile.check_public_key(requested)
    except CAError:  # AlgorithmNotAllowed (type, curve) or PolicyDenied (RSA size)
        return False
    return True


# --- the operation -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyDelivery:
    """How this request's key travels: `kind` is what its event records ('pkcs8', 'cms-certificate',
    'cms-kek'), with the recipient certificate or the key-encryption key (identifier, key)."""

    kind: str
    recipient: x509.Certificate | None = None
    kek: tuple[bytes, bytes] | None = None


class ServerKeygen:
    """The serverkeygen operation for one CA. Immutable."""

    def __init__(
        self,
        *,
        intake: Intake,
        issuance: Issuance,
        authorizer: Authorizer,
        events: EventLog,
        signer_key: PrivateKey,
        signer_certificate: x509.Certificate,
        keks: dict[bytes, bytes],
    ) -> None:
        self.intake = intake
        self.issuance = issuance
        self.authorizer = authorizer
        self.events = events
        self.signer_key = signer_key  # signs the key package
        self.signer_certificate = signer_certificate
        self.keks = keks  # pre-shared key-encryption keys by identifier (est.key_delivery.load_keks)

    def serverkeygen(self, request: EstRequest, body: bytes, content_type: str | None) -> EstReply:
        """RFC 7030 §4.4: a key made here, certified under the label, returned with its certificate."""
        try:
            self.intake.limit_address(request)
            self.intake.shed(request)  # a generated key is never stored: no deferral, no queue
            request = self.intake.authenticate(request)
            profile = request.profile
            if not profile.est_serverkeygen:
                raise PolicyDenied(f"server-side key generation is not enabled for label {profile.name!r}")
            if profile.approval == "manual":
                # The key would have to be kept until an approval: generated keys are never stored.
                raise PolicyDenied("server-side key generation is not offered where requests await approval")
            request, csr = self.intake.read_csr(request, wire.decode_request_body(body, content_type))
            self.intake.limit_device(request)
            encryption = key_request(csr.der)
            key = generate_key(csr.csr.public_key(), profile)
            wanted = CertificateRequest.from_csr(csr.csr, key.public_key())
            authorization = self.authorizer.authorize(request.asker, profile, "est", wanted)
            delivery = self._delivery(request.connection, encryption)
            request = request.noting(key_delivery=delivery.kind)
            key_part, key_type = self._package(key, delivery)
            issued = self.issuance.issue(request, authorization)
            certs = wire.certs_only([issued.certificate])
            multipart, multipart_type = wire.serverkeygen_multipart(
                key_part, key_type, certs, "est-" + secrets.token_hex(12)
            )
            return EstReply(multipart, multipart_type, base64=False)
        except CAError as exc:
            self.events.refused(request, exc, body, content_type)
            raise

    def _delivery(self, connection: EstConnection, encryption: KeyEncryptionRequest | None) -> KeyDelivery:
        """Bare without an encryption request; otherwise to the key it names, which must be known."""
        if encryption is None:
            return KeyDelivery("pkcs8")
        if encryption.asymmetric:
            recipient = connection.client_certificate
            if recipient is None or _ski(recipient) != encryption.key_identifier:
                raise InvalidRequest(
                    "AsymmetricDecryptKeyIdentifier names no key of the TLS client certificate of this request"
                )
            return KeyDelivery("cms-certificate", recipient=recipient)
        kek = self.keks.get(encryption.key_identifier)
        if kek is None:
            raise InvalidRequest("DecryptKeyIdentifier names no key-encryption key this server holds")
        return KeyDelivery("cms-kek", kek=(encryption.key_identifier, kek))

    def _package(self, key: PrivateKey, delivery: KeyDelivery) -> tuple[bytes, str]:
        """The key part of the reply and its content type."""
        if delivery.recipient is not None:
            package = key_delivery.encrypt_to_certificate(
                key, delivery.recipient, self.signer_key, self.signer_certificate
            )
            return package, wire.SERVER_GENERATED_KEY
        if delivery.kek is not None:
            kek_id, kek = delivery.kek
            package = key_delivery.encrypt_to_kek(key, kek_id, kek, self.signer_key, self.signer_certificate)
            return package, wire.SERVER_GENERATED_KEY
        return key_delivery.pkcs8_der(key), wire.PKCS8


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None
