"""The declarative tables of the configuration: every setting, and the help of every profile key.

Each setting is declared once here; gateway.config derives the sample file, the environment
variable names and the validation from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "GATEWAY_"


@dataclass(frozen=True)
class Setting:
    """One configuration key: its kind, default, help text and the bounds its value must keep."""

    key: str  # dotted: section.name
    kind: str  # str | int | bool | hostport | url | path | choice | networks | identity | fingerprints | kms
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        "str",
        "",
        "SQLAlchemy URL; empty means SQLite in the data directory (gateway.db). "
        "For several nodes: postgresql+psycopg://USER:PASSWORD@HOST/DB",
    ),
    Setting(
        "public_base_url",
        "url",
        "",
        "Base URL written into certificates for CRL, OCSP and CA issuers; empty means http://<listen.http>",
    ),
    Setting("default_profile", "str", "default", "Profile used when a request names none"),
    Setting("listen.http", "hostport", "127.0.0.1:8080", "Plain-HTTP listener (SCEP, CRL, OCSP, CA certificate)"),
    Setting("listen.https", "hostport", "127.0.0.1:8443", "HTTPS listener (EST, SCEP, admin, CRL, OCSP)"),
    Setting("listen.workers", "int", 2, "gunicorn worker processes per listener", minimum=1, maximum=64),
    Setting(
        "listen.threads",
        "int",
        4,
        "Deprecated and ignored: each connection is a greenlet of the gevent worker, not a thread",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "listen.connections",
        "int",
        2000,
        "Connections one worker holds at once (idle and slow ones included)",
        minimum=10,
        maximum=100000,
    ),
    Setting(
        "listen.max_connections_per_address",
        "int",
        128,
        "Connections one client address may hold per worker (trusted proxies exempt)",
        minimum=1,
        maximum=100000,
    ),
    Setting(
        "listen.tls_handshake_timeout_seconds",
        "int",
        10,
        "A TLS handshake not finished within this is dropped",
        minimum=1,
        maximum=300,
    ),
    Setting(
        "listen.header_timeout_seconds",
        "int",
        15,
        "A request head not received in full within this (and a kept-alive connection idle this long) is closed",
        minimum=1,
        maximum=300,
    ),
    Setting(
        "listen.body_timeout_seconds",
        "int",
        30,
        "A request body not received in full within this gets 408; also the limit of any single read or write",
        minimum=1,
        maximum=3600,
    ),
    Setting("listen.timeout_seconds", "int", 30, "a worker silent for this long is restarted", minimum=5, maximum=3600),
    Setting(
        "listen.trusted_proxies",
        "networks",
        "",
        "Reverse proxies and load balancers (comma-separated addresses or CIDRs) whose Forwarded / "
        "X-Forwarded-For / X-Forwarded-Proto headers are believed, on both listeners; empty: nobody's",
    ),
    Setting(
        "admission.max_in_flight",
        "int",
        16,
        "Protocol operations one worker runs at once; more wait for a slot (0 would refuse all: at least 1)",
        minimum=1,
        maximum=10000,
    ),
    Setting(
        "admission.queue_wait_ms",
        "int",
        2000,
        "How long a request waits for a slot; then a SCEP enrollment is deferred (PENDING), an EST one gets "
        "202, anything else 503, all with Retry-After",
        minimum=0,
        maximum=600000,
    ),
    Setting(
        "admission.retry_after_seconds",
        "int",
        10,
        "Retry-After of a deferred or shed request, and of a rate-limited one",
        minimum=1,
        maximum=86400,
    ),
    Setting(
        "admission.device_rate_per_minute",
        "int",
        60,
        "Requests per minute one device may make per worker (0: no limit); over it EST answers 429 and SCEP a "
        "signed FAILURE",
        minimum=0,
        maximum=1000000,
    ),
    Setting(
        "admission.address_rate_per_minute",
        "int",
        0,
        "Requests per minute one client address may make per worker (0: no limit). Off by default: a fleet "
        "behind one NAT or balancer shares an address",
        minimum=0,
        maximum=1000000,
    ),
    Setting(
        "admission.deferred_check_seconds",
        "int",
        1,
        "How often each worker looks for deferred requests to issue with a slot it has to spare; a longer "
        "interval leaves more of a storm's capacity to the requests arriving",
        minimum=1,
        maximum=3600,
    ),
    Setting(
        "admission.burst",
        "int",
        30,
        "Requests one device, or one client address, may make at once before its rate applies",
        minimum=1,
        maximum=1000000,
    ),
    Setting("tls.cert", "path", "tls/server.crt", "HTTPS server certificate chain (PEM), relative to the data dir"),
    Setting("tls.key", "path", "tls/server.key", "HTTPS server private key (PEM), or pkcs11:object=NAME in keys.kms"),
    Setting("tls.min_version", "choice", "1.2", "Lowest TLS version accepted", choices=("1.2", "1.3")),
    Setting(
        "tls.client_certificates",
        "choice",
        "optional",
        "Ask TLS clients for a certificate (EST, admin); 'none' never asks",
        choices=("optional", "none"),
    ),
    Setting(
        "est.trusted_proxies",
        "networks",
        "",
        "Deprecated: use listen.trusted_proxies (this is read only while that is empty)",
    ),
    Setting(
        "est.proxy_cert_header",
        "str",
        "X-SSL-Client-Cert",
        "Header carrying the client certificate from a trusted proxy (URL-encoded PEM, as nginx's "
        "$ssl_client_escaped_cert)",
    ),
    Setting(
        "est.proxy_verify_header",
        "str",
        "X-SSL-Client-Verify",
        "Header in which a trusted proxy says it verified the client certificate (must be SUCCESS)",
    ),
    Setting(
        "est.kek_dir",
        "path",
        "est/keks",
        "Pre-shared key-encryption keys for EST serverkeygen (DecryptKeyIdentifier): files <hex id>.key",
    ),
    Setting(
        "migration.identity",
        "identity",
        "cn",
        "Which part of a certificate names the device, for imports and live enrollments alike: cn, "
        "san:dns|email|uri|ip|upn, serialNumber, or regex:PATTERN over the subject (group 'id')",
    ),
    Setting(
        "migration.est_url",
        "url",
        "",
        "EST base URL handed to devices (map files, sunset refusals); empty: https://<listen.https>/.well-known/est",
    ),
    Setting(
        "migration.silent_days",
        "int",
        14,
        "A mapped device silent on EST for this many days is reported as silent",
        minimum=1,
        maximum=3650,
    ),
    Setting(
        "migration.retire_after_days",
        "int",
        30,
        "A device whose certificate expired this many days ago (or is revoked) is retired",
        minimum=0,
        maximum=3650,
    ),
    Setting(
        "admin.client_cert_fingerprints",
        "fingerprints",
        "",
        "TLS client certificates (SHA-256 fingerprints, hex, comma-separated) accepted as admin "
        "credentials for the migration dashboard and its API; empty: admin tokens only",
    ),
    Setting("ca.name", "str", "ca", "Issuer name of the signing CA (URL path of its CRL: /crl/<name>.crl)"),
    Setting("ca.cert", "path", "ca/ca.crt", "CA certificate, followed by its own issuers if any (PEM)"),
    Setting("ca.key", "path", "ca/ca.key", "CA private key (PEM)"),
    Setting("ra.cert", "path", "ra/ra.crt", "SCEP RA certificate (PEM)"),
    Setting("ra.key", "path", "ra/ra.key", "SCEP RA private key (PEM)"),
    Setting(
        "ra.encryption_cert",
        "path",
        "",
        "SCEP RA encryption certificate (PEM, keyEncipherment): the recipient of request envelopes, while "
        "ra.cert only signs; empty: the one RA of ra.cert signs and decrypts",
    ),
    Setting("ra.encryption_key", "path", "", "Private key of ra.encryption_cert (PEM); set with it"),
    Setting(
        "ra.renew_before_days",
        "int",
        30,
        "The SCEP RA certificate renews itself (same key) when fewer days than this, or less than a third "
        "of its lifetime, remain; 0: never (renew by hand)",
        minimum=0,
        maximum=365,
    ),
    Setting("next_ca.cert", "path", "ca-next/ca.crt", "Next CA certificate (PEM), made by `gateway ca rollover`"),
    Setting("next_ca.key", "path", "ca-next/ca.key", "Next CA private key (PEM)"),
    Setting("next_ra.cert", "path", "ra-next/ra.crt", "SCEP RA certificate issued by the next CA (PEM)"),
    Setting("next_ra.key", "path", "ra-next/ra.key", "Private key of the next SCEP RA (PEM)"),
    Setting(
        "crl.validity_hours",
        "int",
        24,
        "nextUpdate of each CRL, in hours after thisUpdate",
        minimum=1,
        maximum=24 * 366,
    ),
    Setting(
        "crl.refresh_minutes",
        "int",
        60,
        "A new CRL is published this often even without revocations",
        minimum=1,
        maximum=60 * 24 * 365,
    ),
    Setting(
        "ocsp.validity_minutes",
        "int",
        60,
        "nextUpdate of each OCSP response, in minutes",
        minimum=1,
        maximum=60 * 24 * 7,
    ),
    Setting(
        "keys.passphrase_file",
        "path",
        "",
        "File holding the passphrase of the encrypted keys "
        "(or set GATEWAY_KEY_PASSPHRASE); empty: keys are not encrypted",
    ),
    Setting(
        "keys.kms",
        "kms",
        "",
        "PKCS#11 token holding keys (RFC 7512 URI): pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw"
        "?pin-source=file:///etc/gateway/pin; then ca.key, ra.key and ra.encryption_key may name a key in it "
        "(pkcs11:object=ca-key) instead of a file; empty: every key is a file",
    ),
    Setting(
        "metrics.allowed_addresses",
        "networks",
        "127.0.0.0/8,::1",
        "Client addresses (comma-separated addresses or CIDRs) that may read /metrics without an admin token; "
        "empty: an admin token only",
    ),
    Setting(
        "audit.node",
        "str",
        "",
        "Name of this node in the audit trail's hash chains (one chain per node); empty: the host name",
    ),
    Setting(
        "audit.syslog",
        "str",
        "",
        "Also send each audit record to syslog: a socket path (/dev/log) or udp://HOST:PORT; empty: off",
    ),
    Setting("log.format", "choice", "text", "Log format: text for people, json for machines", choices=("text", "json")),
    Setting("log.level", "choice", "info", "Log level", choices=("debug", "info", "warning", "error")),
)

# The key settings that may name a key in the keys.kms token (a pkcs11: URI) instead of a file; the TLS
# key through OpenSSL's pkcs11 provider (gateway.tls_token).
TOKEN_KEY_SETTINGS = frozenset({"ca.key", "ra.key", "ra.encryption_key", "tls.key"})

# What `gateway config sample` writes above each key of [profiles.default], in this order.
PROFILE_HELP: dict[str, str] = {
    "description": "Shown in listings",
    "validity_days": "Certificate lifetime (capped by the CA's own expiry)",
    "backdate_minutes": "notBefore lies this far in the past, for clients with slow clocks",
    "key_usage": "digital_signature, content_commitment, key_encipherment, data_encipherment, key_agreement",
    "extended_key_usage": "client_auth, server_auth, code_signing, email_protection, ... or dotted OIDs",
    "key_types": "rsa, ec, ed25519",
    "rsa_min_bits": "Smallest RSA key accepted (never below 2048)",
    "rsa_max_bits": "Largest RSA key accepted",
    "ec_curves": "P-256, P-384, P-521",
    "subject_required": "Subject attributes a request must carry",
    "subject_allowed": "Subject attributes copied into certificates",
    "subject_unlisted": "A subject attribute not allowed: refuse the request, or drop the attribute",
    "subject_repeatable": "Subject attributes that may appear more than once (a repeated CN is refused)",
    "allow_multi_valued_rdns": "Accept multi-valued RDNs such as CN=a+O=b (relying parties read them differently)",
    "cn_pattern": "Regular expression the CN must match in full (empty: any)",
    "san_types": "subjectAltName types copied from requests: dns, ip, email, uri, upn, other, dirname",
    "san_unlisted": "A SAN of another type: refuse the request, or drop the SAN",
    "max_sans": "Most subjectAltNames in one certificate",
    "cn_as_dns_san": "Copy the CN into a DNS (or IP) subjectAltName",
    "revoke_on_renewal": "Revoke (superseded) the renewed certificate once the grace period ends",
    "renewal_grace_hours": "Hours the renewed certificate stays valid after its successor is issued",
    "allow_key_reuse": "Allow renewal with the same key",
    "renewal_window_days": "A certificate renews only this many days before it expires, or later (0: any time)",
    "protocols": "Protocols that may request this profile: scep, est. A profile that makes TLS server "
    "certificates (serverAuth, any or no EKU) has none unless set here; `gateway cert issue` ignores it",
    "scep_challenge": "Static SCEP challenge password of this profile (empty: none)",
    "approval": "auto: issue at once; manual: SCEP answers PENDING and EST 202 until `gateway request approve`",
    "scep_ciphers": "SCEP envelope ciphers accepted (replies use the requester's): des, 3des, aes128, "
    "aes192, aes256, aes128-gcm, aes256-gcm",
    "scep_digests": "SCEP digests accepted: sha1, sha224, sha256, sha384, sha512; md5 only for a legacy fleet",
    "scep_renewal": "A request signed by a valid certificate of this CA renews without a challenge",
    "scep_webhook_url": "Ask this URL (HMAC-SHA256-signed JSON) whether to accept a SCEP request (empty: off)",
    "scep_webhook_secret": "HMAC key for the webhook's X-Gateway-Signature header",
    "scep_webhook_timeout_seconds": "Webhook timeout; no answer in time means refuse",
    "scep_signing_time_tolerance_minutes": "A SCEP message's signingTime, when sent, within this of the "
    "server's clock, else FAILURE badTime (0: not checked)",
    "scep_lockout_threshold": "Wrong challenges per presented value, device or client address (IPv6: per /64) "
    "before that one is locked out",
    "scep_lockout_minutes": "Length of a lockout, and the window the wrong attempts are counted in",
    "scep_lockout_profile_threshold": "Wrong challenges on the whole profile (any address, any device) that "
    "suspend its static challenge for scep_lockout_minutes; one-time challenges and renewals go on",
    "est_pop_linking": "EST: the CSR's challengePassword must carry the TLS channel binding (tls-unique; the "
    "HTTPS listener then negotiates TLS 1.2)",
    "est_csrattrs_enforce": "EST: refuse (400) a CSR that lacks what /csrattrs asks for",
    "est_required_san_types": "EST: subjectAltName types every CSR must carry (listed in /csrattrs)",
    "est_serverkeygen": "EST: allow /serverkeygen (the gateway generates the key and never stores it)",
    "est_retry_after_seconds": "EST: Retry-After of a 202 answer while a request awaits approval",
}
