"""The project's own SCEP client (RFC 8894 §4) over urllib: what `gateway client scep …` runs.

Admins use it to test a server, the benchmark to drive one. Every failure is a ScepClientError
with one line of text; a FAILURE or PENDING CertRep is a result, not an error.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AttributeOID

from scep.asn1 import Digest, FailInfo, MessageType, PkiStatus
from scep.client_messages import (
    CertRepError,
    CertRepReply,
    build_pki_request,
    issuer_and_subject_der,
    parse_cert_rep,
    read_certs_only,
    self_signed_signer,
    transaction_id_for,
)
from scep.envelope import ContentCipher
from scep.ra_roles import RaCertificates, select_ra_certificates
from shared_ca.errors import CAError
from shared_ca.keys import KeyType, generate_private_key, load_private_key, write_private_key

PKI_MESSAGE_TYPE = "application/x-pki-message"
MAX_REPLY_BYTES = 1024 * 1024
USER_AGENT = "gateway-scep-client/1"


class ScepClientError(Exception):
    """The exchange failed (connection, HTTP status, unreadable reply); the text is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclasses.dataclass(frozen=True)
class EnrollResult:
    """The outcome of an enrollment, renewal or poll."""

    status: PkiStatus
    certificate: x509.Certificate | None
    fail_info: FailInfo | None
    fail_info_text: str | None
    transaction_id: str

    @property
    def fail_info_name(self) -> str | None:
        """The RFC 8894 name of the failInfo ('badAlg'), None unless FAILURE."""
        return self.fail_info.rfc_name if self.fail_info is not None else None


class ScepHttpClient:
    """One SCEP server URL (such as http://host/scep or …/cgi-bin/pkiclient.exe)."""

    def __init__(self, url: str, *, timeout: float = 30, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ScepClientError(f"{url!r} is not an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._caps: list[str] | None = None
        self._ca_certs: RaCertificates | None = None

    # -- HTTP -------------------------------------------------------------------------------------

    def _url(self, operation: str, **params: str) -> str:
        query = urllib.parse.urlencode({"operation": operation, **params})
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    def _fetch(self, url: str, body: bytes | None = None) -> tuple[bytes, str]:
        """The body and Content-Type of a 2xx reply (POST when `body` is given); ScepClientError else."""
        headers = {"User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = PKI_MESSAGE_TYPE
        request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - http(s) checked in __init__
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context) as reply:  # noqa: S310
                data: bytes = reply.read(MAX_REPLY_BYTES + 1)
                content_type = reply.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            text = exc.read(400).decode("utf-8", "replace").strip()
            raise ScepClientError(f"HTTP {exc.code} {exc.reason} from {self.url}: {text or '(no body)'}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise ScepClientError(f"cannot reach {self.url}: {reason}") from None
        except TimeoutError:
            raise ScepClientError(f"no answer from {self.url} within {self.timeout:g} s") from None
        except (OSError, ValueError) as exc:  # connection reset, malformed reply
            raise ScepClientError(f"request to {self.url} failed: {exc}") from None
        if len(data) > MAX_REPLY_BYTES:
            raise ScepClientError(f"reply from {self.url} is larger than {MAX_REPLY_BYTES} bytes")
        return data, content_type

    # -- operations -------------------------------------------------------------------------------

    def get_ca_caps(self) -> list[str]:
        """GetCACaps (RFC 8894 §3.5.1): the capability keywords, one per line of the reply."""
        if self._caps is None:
            body, _ = self._fetch(self._url("GetCACaps"))
            self._caps = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
        return list(self._caps)

    def supports(self, capability: str) -> bool:
        """True when GetCACaps lists `capability` (case-insensitively, as old servers vary)."""
        return capability.lower() in (cap.lower() for cap in self.get_ca_caps())

    def ra_certificates(self) -> RaCertificates:
        """GetCACert (RFC 8894 §4.2): the RA certificate requests are encrypted to, the one CertReps are
        signed by (the same one unless the RA has separate roles: scep.ra_roles), and the CA chain.

        A single DER certificate means the CA acts as its own RA.
        """
        if self._ca_certs is None:
            body, content_type = self._fetch(self._url("GetCACert"))
            self._ca_certs = parse_ca_certs(body, content_type)
        return self._ca_certs

    def get_ca_certs(self) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """GetCACert: the RA certificate requests are encrypted to, and the CA chain."""
        found = self.ra_certificates()
        return found.recipient, list(found.chain)

    def pki_operation(self, message: bytes, *, use_post: bool) -> bytes:
        """PKIOperation (RFC 8894 §4.3): POST the DER message, or GET it base64 in the query."""
        if use_post:
            body, _ = self._fetch(self._url("PKIOperation"), message)
        else:
            body, _ = self._fetch(self._url("PKIOperation", message=base64.b64encode(message).decode("ascii")))
        if not body:
            raise ScepClientError(f"empty PKIOperation reply from {self.url}")
        return body


def parse_ca_certs(body: bytes, content_type: str) -> RaCertificates:
    """The RA certificates and CA chain of a GetCACert reply: a degenerate PKCS#7 (its RAs told apart
    by key usage: scep.ra_roles) or a single DER certificate."""
    try:
        certs, _crls = read_certs_only(body)
    except CertRepError as exc:
        try:
            cert = x509.load_der_x509_certificate(body)
        except ValueError:
            raise ScepClientError(f"unreadable GetCACert reply ({content_type}): {exc}") from None
        return RaCertificates(cert, cert, (cert,))
    if not certs:
        raise ScepClientError("the GetCACert reply holds no certificate")
    return select_ra_certificates(certs)


# -- high-level operations ----------------------------------------------------------------------------


def make_csr(
    key: rsa.RSAPrivateKey,
    subject: x509.Name,
    *,
    challenge: str | None = None,
    sans: x509.SubjectAlternativeName | None = None,
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request, with the challengePassword attribute when `challenge` is given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(key, hashes.SHA256())


def _exchange(
    client: ScepHttpClient,
    message_type: MessageType,
    *,
    content_der: bytes,
    key: rsa.RSAPrivateKey,
    signer_cert: x509.Certificate,
    transaction_id: str,
    cipher: ContentCipher,
    digest: Digest,
    expect_key: rsa.RSAPublicKey | None,
) -> EnrollResult:
    """Send one pkiMessage, enveloped to the RA's recipient certificate, and read the CertRep, checking
    it answers this request and is signed by the RA's signing certificate."""
    ras = client.ra_certificates()
    nonce = os.urandom(16)
    message = build_pki_request(
        message_type,
        content_der=content_der,
        signer_cert=signer_cert,
        signer_key=key,
        recipient_cert=ras.recipient,
        transaction_id=transaction_id,
        sender_nonce=nonce,
        digest=digest,
        content_cipher=cipher,
    )
    reply_der = client.pki_operation(message, use_post=client.supports("POSTPKIOperation"))
    try:
        reply = parse_cert_rep(reply_der, ra_cert=ras.signer, signer_key=key, signer_cert=signer_cert)
    except CertRepError as exc:
        raise ScepClientError(f"bad reply from {client.url}: {exc}") from None
    if reply.transaction_id != transaction_id:
        raise ScepClientError(f"bad reply from {client.url}: transactionID {reply.transaction_id!r} is not ours")
    if reply.recipient_nonce != nonce:
        raise ScepClientError(f"bad reply from {client.url}: recipientNonce is not our senderNonce")
    return EnrollResult(
        status=reply.status,
        certificate=_issued(reply, expect_key) if reply.status is PkiStatus.SUCCESS else None,
        fail_info=reply.fail_info,
        fail_info_text=reply.fail_info_text,
        transaction_id=transaction_id,
    )


def _issued(reply: CertRepReply, key: rsa.RSAPublicKey | None) -> x509.Certificate:
    """The certificate for `key` among those of a SUCCESS reply (the first if `key` is None)."""
    for cert in reply.certificates:
        if key is None or cert.public_key() == key:
            return cert
    raise ScepClientError("the SUCCESS reply holds no certificate for our key")


def enroll(
    client: ScepHttpClient,
    *,
    key: rsa.RSAPrivateKey,
    subject: x509.Name | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    challenge: str | None = None,
    cipher: ContentCipher = ContentCipher.AES256,
    digest: Digest = Digest.SHA256,
    transaction_id: str | None = None,
) -> EnrollResult:
    """PKCSReq (RFC 8894 §3.3.1): a CSR for `key` (built from `subject` and `challenge`, or `csr`),
    signed by `key` under a transient self-signed certificate."""
    if csr is None:
        if subject is None:
            raise ValueError("enroll needs a subject or a CSR")
        csr = make_csr(key, subject, challenge=challenge)
    signer = self_signed_signer(key, csr.subject)
    return _exchange(
        client,
        MessageType.PKCSReq,
        content_der=csr.public_bytes(Encoding.DER),
        key=key,
        signer_cert=signer,
        transaction_id=transaction_id or transaction_id_for(key.public_key()),
        cipher=cipher,
        digest=digest,
        expect_key=key.public_key(),
    )


def renew(
    client: ScepHttpClient,
    *,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    new_key: rsa.RSAPrivateKey | None = None,
    cipher: ContentCipher = ContentCipher.AES256,
    digest: Digest = Digest.SHA256,
    transaction_id: str | None = None,
) -> EnrollResult:
    """RenewalReq (RFC 8894 §3.3.1.2): same subject and SANs, for `new_key` (rekey) or `key`,
    signed by the current `cert` and `key`."""
    certified = new_key or key
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    csr = make_csr(certified, cert.subject, sans=sans)
    return _exchange(
        client,
        MessageType.RenewalReq,
        content_der=csr.public_bytes(Encoding.DER),
        key=key,
        signer_cert=cert,
        transaction_id=transaction_id or uuid.uuid4().hex,
        cipher=cipher,
        digest=digest,
        expect_key=certified.public_key(),
    )


def poll(
    client: ScepHttpClient,
    *,
    key: rsa.RSAPrivateKey,
    transaction_id: str,
    subject: x509.Name | None = None,
    signer_cert: x509.Certificate | None = None,
    cipher: ContentCipher = ContentCipher.AES256,
    digest: Digest = Digest.SHA256,
) -> EnrollResult:
    """CertPoll (RFC 8894 §3.3.3) for a pending request, signed as the request was (the transient
    self-signed certificate of `key` and `subject`, or `signer_cert` for a renewal)."""
    if signer_cert is None:
        if subject is None:
            raise ValueError("poll needs the request's subject or its signer certificate")
        signer_cert = self_signed_signer(key, subject)
    _ra, chain = client.get_ca_certs()
    content = issuer_and_subject_der(chain[0].subject, subject or signer_cert.subject)
    return _exchange(
        client,
        MessageType.CertPoll,
        content_der=content,
        key=key,
        signer_cert=signer_cert,
        transaction_id=transaction_id,
        cipher=cipher,
        digest=digest,
        expect_key=None,
    )


# -- files for the command line -----------------------------------------------------------------------


def load_or_create_rsa_key(path: Path) -> tuple[rsa.RSAPrivateKey, bool]:
    """The RSA key in `path`, or a new RSA-2048 key written there (0600); True when created."""
    if not path.exists():
        key = generate_private_key(KeyType.RSA2048)
        assert isinstance(key, rsa.RSAPrivateKey)
        write_private_key(path, key, None)
        return key, True
    return load_rsa_key(path), False


def load_rsa_key(path: Path) -> rsa.RSAPrivateKey:
    """An RSA private key from a PEM or DER file (SCEP envelopes need RSA key transport)."""
    try:
        key = load_private_key(path, None)
    except CAError as exc:
        raise ScepClientError(str(exc)) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ScepClientError(f"{path} is not an RSA key; SCEP needs RSA")
    return key


def tls_context(cafile: Path | None) -> ssl.SSLContext | None:
    """A verifying TLS context trusting `cafile`, or None for the system default."""
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ScepClientError(f"cannot load CA file {cafile}: {exc}") from None


def describe(result: EnrollResult) -> str:
    """One line for a FAILURE or PENDING result."""
    if result.status is PkiStatus.FAILURE:
        return f"FAILURE {result.fail_info_name}: {result.fail_info_text or '(no failInfoText)'}"
    if result.status is PkiStatus.PENDING:
        tid = result.transaction_id
        poll = f"gateway client scep poll --transaction-id {tid}"
        return f"PENDING: transaction {tid} awaits approval; poll with `{poll}`"
    return "SUCCESS"
