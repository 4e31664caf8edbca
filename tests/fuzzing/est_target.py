"""EST inputs: PKCS#10 bodies for simpleenroll, simplereenroll and serverkeygen, Full CMC for fullcmc.

Every case picks an operation, a label, credentials (none, the fuzz user's Basic credentials, a
user bound to one device, wrong or malformed Basic, a client certificate issued at set-up, or one
forged and signed by the test CA) and a body: a CSR (valid, or mutated inside and signed again, so
it passes authentication and reaches policy, serverkeygen and event code) in one of the encodings
clients send (base64 with any line breaks, PEM, DER), and sometimes raw byte mutations on top.
Full CMC requests are PKIData built here around such CSRs, signed by the CSR's key (sid = subject
key identifier) or by a client certificate, with revokeRequest and unknown controls, any digest.
"""

from __future__ import annotations

import base64
import hashlib
import random

from cryptography import x509

from shared_ca.cms import der_integer, der_octet_string, der_oid, der_sequence, der_tlv
from tests.fuzzing import cms_forge, der_tree, forge
from tests.fuzzing.gateway_env import BOUND_USER, EST_PASSWORD, EST_USER, LABELS, FuzzCase, FuzzGateway, Issued
from tests.fuzzing.mutate import base64_forms, mutate_bytes

OPERATIONS = (("simpleenroll", 35), ("simplereenroll", 20), ("serverkeygen", 20), ("fullcmc", 25))
PKI_DATA_OID = "1.3.6.1.5.5.7.12.2"
CMC = "1.3.6.1.5.5.7.7."
CONTENT_TYPES = (
    "application/pkcs10",
    "application/pkcs7-mime; smime-type=CMC-request",
    "application/x-www-form-urlencoded",
    "",
    "application/pkcs10; charset=\x00",
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class EstTarget:
    """Makes one EST request case at a time (see the module docstring)."""

    name = "est"

    def __init__(self, env: FuzzGateway) -> None:
        self.env = env
        keys = forge.key_pool()
        self.csr_keys = [keys["p256"], keys["rsa2048-a"], keys["p384"], keys["ed25519"], keys["rsa1024"], keys["k256"]]
        self.client = env.issued[1]  # an EST device: client-certificate enrollment and renewal
        self.spare = env.issued[2]  # revoked by fullcmc sometimes; renewals then meet a revoked certificate
        self.base_csrs: dict[tuple[int, str, bool, str | None], bytes] = {}

    # -- pieces -------------------------------------------------------------------------------------

    def _csr(self, rng: random.Random, holder: Issued | None) -> tuple[bytes, forge.SigningKey, str]:
        """A CSR (valid or mutated and signed again), its key, and what it is."""
        if holder is not None and rng.random() < 0.7:
            key: forge.SigningKey = holder.key
            cn = holder.certificate.subject.rfc4514_string().removeprefix("CN=")
        else:
            key = rng.choice(self.csr_keys)
            cn = rng.choice(("est-device", "bound-device", "fuzz-device-1", "a" * 64))
        with_san, challenge = rng.random() < 0.4, rng.choice((None, None, "challenge"))
        made = (id(key), cn, with_san, challenge)
        if made not in self.base_csrs:  # the starting points are few: made once each
            sans: list[x509.GeneralName] | None = [x509.DNSName(f"{cn[:20]}.example")] if with_san else None
            self.base_csrs[made] = forge.base_csr(key, cn, challenge, sans=sans)
        base = self.base_csrs[made]
        if rng.random() < 0.25:
            return base, key, "csr=valid"
        signer = key if rng.random() < 0.9 else rng.choice(self.csr_keys)
        return forge.mutated_csr(rng, base, signer, "challenge", rng.choice(cms_forge.DIGESTS)), key, "csr=mutated"

    def _credentials(self, rng: random.Random) -> tuple[dict[str, str], Issued | None, bytes | None, str]:
        """(headers, the holder whose certificate is presented, the certificate DER, what it is)."""
        choice = rng.randrange(9)
        if choice in (0, 1):
            return {"Authorization": _basic(EST_USER, EST_PASSWORD)}, None, None, "auth=basic"
        if choice == 2:
            return {"Authorization": _basic(BOUND_USER, EST_PASSWORD)}, None, None, "auth=bound"
        if choice == 3:
            value = rng.choice(
                (
                    _basic(EST_USER, "wrong"),
                    "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
                    "Basic !!!",
                    "Basic " + base64.b64encode(b"nocolon").decode(),
                    "Bearer x",
                    "Basic",
                    _basic("é" * 300, "x"),
                )
            )
            return {"Authorization": value}, None, None, "auth=bad-basic"
        if choice in (4, 5, 6):
            holder = self.client if rng.random() < 0.8 else self.spare
            return {}, holder, holder.der, "auth=client-cert"
        if choice == 7:  # a certificate forged and signed by the test CA: it verifies, the store does not know it
            ca_key = self.env.ca_key
            assert isinstance(ca_key, forge.SIGNING_KEY_TYPES)
            forged = forge.mutated_certificate(rng, self.client.der, ca_key)
            try:
                x509.load_der_x509_certificate(forged)
            except (ValueError, x509.InvalidVersion):  # the TLS stack hands over only what it parsed
                forged = self.client.der
            return {}, self.client, forged, "auth=forged-cert"
        return {}, None, None, "auth=none"

    def _cmc(self, rng: random.Random, holder: Issued | None) -> tuple[bytes, str]:
        """A Full PKI Request around one CSR (sometimes none, two, or a revokeRequest)."""
        csr_der, key, what = self._csr(rng, holder)
        controls = [
            der_sequence(der_integer(10), der_oid(CMC + "5"), der_tlv(0x31, der_integer(rng.randrange(-5, 1 << 40)))),
            der_sequence(der_integer(11), der_oid(CMC + "6"), der_tlv(0x31, der_octet_string(rng.randbytes(16)))),
        ]
        requests = [der_tlv(0xA0, der_integer(1) + csr_der)]
        shape = rng.randrange(6)
        if shape == 0:
            requests.append(der_tlv(0xA0, der_integer(2) + csr_der))
        elif shape == 1 and holder is not None:
            revoke = der_sequence(
                self.env.ca.subject.public_bytes(),
                der_integer(holder.certificate.serial_number if rng.random() < 0.5 else rng.randrange(1 << 64)),
                der_tlv(0x0A, bytes([rng.choice((0, 1, 4, 7, 11))])),
            )
            controls.append(der_sequence(der_integer(3), der_oid(CMC + "17"), der_tlv(0x31, revoke)))
            requests = []
        elif shape == 2:
            controls.append(der_sequence(der_integer(4), der_oid(CMC + "2"), der_tlv(0x31, der_tlv(0x0C, b"id"))))
        pki_data = der_sequence(der_sequence(*controls), der_sequence(*requests), der_sequence(), der_sequence())
        if rng.random() < 0.4:
            pki_data = der_tree.mutate_der(rng, pki_data, rng.randrange(1, 3))
        digest = rng.choice(cms_forge.DIGESTS)
        attributes = cms_forge.attribute("1.2.840.113549.1.9.3", der_oid(PKI_DATA_OID)) + cms_forge.attribute(
            "1.2.840.113549.1.9.4", der_octet_string(hashlib.new(digest, pki_data).digest())
        )
        if holder is not None and rng.random() < 0.5:
            signer_key: forge.SigningKey = holder.key
            sid = forge.issuer_and_serial(holder.der)
            certificates: tuple[bytes, ...] = (holder.der,)
        else:
            signer_key = key
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
            sid, certificates = der_tlv(0x80, ski), ()
        der = cms_forge.signed_data(
            rng,
            content_type=PKI_DATA_OID,
            content=pki_data,
            attributes=attributes,
            key=signer_key,
            sid=sid,
            certificates=certificates,
            digest=digest,
        )
        return der, f"{what} cmc-shape={shape} digest={digest}"

    # -- cases --------------------------------------------------------------------------------------

    def _valid(self, rng: random.Random) -> FuzzCase:
        """The baseline: a valid request with good credentials (keeps issuance and its events exercised)."""
        operation = rng.choice(("simpleenroll", "simplereenroll", "serverkeygen"))
        holder = self.client if operation == "simplereenroll" or rng.random() < 0.3 else None
        headers = {} if holder is not None else {"Authorization": _basic(EST_USER, EST_PASSWORD)}
        key = holder.key if holder is not None else rng.choice(self.csr_keys[:3])
        cn = (
            holder.certificate.subject.rfc4514_string().removeprefix("CN=")
            if holder
            else f"est-{rng.getrandbits(32):x}"
        )
        body = base64.b64encode(forge.base_csr(key, cn, None))
        headers["Content-Type"] = "application/pkcs10"
        certificate = holder.der if holder is not None else None
        path = f"/.well-known/est/{operation}"
        return FuzzCase(
            self.name,
            "POST",
            path,
            body=body,
            headers=headers,
            https=True,
            client_cert=certificate,
            note=f"op={operation} valid",
        )

    def generate(self, rng: random.Random) -> FuzzCase:
        """One EST case: a valid baseline now and then, else mutated credentials, CSR or CMC, and encoding."""
        if rng.random() < 0.08:
            return self._valid(rng)
        operation = rng.choices([name for name, _ in OPERATIONS], [weight for _, weight in OPERATIONS])[0]
        headers, holder, certificate, auth = self._credentials(rng)
        if operation == "fullcmc":
            der, what = self._cmc(rng, holder)
        else:
            der, _key, what = self._csr(rng, holder if operation != "simpleenroll" or rng.random() < 0.5 else None)
        body, encoding = self._encode(rng, der)
        if rng.random() < 0.15:
            body, encoding = mutate_bytes(rng, body), encoding + "+raw"
        label = rng.choice((None, None, *LABELS, "nosuch"))
        path = f"/.well-known/est/{label}/{operation}" if label else f"/.well-known/est/{operation}"
        headers["Content-Type"] = rng.choice(CONTENT_TYPES)
        tls_version, tls_unique = "TLSv1.3", None
        if label == "linked" or rng.random() < 0.2:
            tls_version, tls_unique = "TLSv1.2", rng.randbytes(12)
        note = f"op={operation} label={label} {auth} {what} body={encoding}"
        return FuzzCase(
            self.name,
            "POST",
            path,
            body=body,
            headers=headers,
            https=True,
            client_cert=certificate,
            tls_version=tls_version,
            tls_unique=tls_unique,
            note=note,
        )

    @staticmethod
    def _encode(rng: random.Random, der: bytes) -> tuple[bytes, str]:
        choice = rng.randrange(6)
        if choice == 0:
            return der, "der"
        if choice == 1:
            pem = base64.encodebytes(der).decode("ascii")
            label = rng.choice(("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", "PKCS7", "CERTIFICATE REQUEST"))
            return f"-----BEGIN {label}-----\n{pem}-----END {label}-----\n".encode(), "pem"
        return base64_forms(rng, der).encode("utf-8"), "base64"
