"""OCSP requests (POST and GET /ocsp) and the admin JSON API (POST /admin/api/scep/challenges).

OCSP: requests built by cryptography for certificates the CA really issued (so the responder looks
them up and signs), with a nonce, every CertID hash; then structural DER mutations (hash OIDs,
serials, several CertIDs, duplicated or unknown extensions) or raw bytes; over GET the base64 and
URL layer is mutated as well.

Admin: a valid admin token (mostly) and random JSON: the known fields with values of every type
and edge (huge integers, floats, NaN, lone surrogates, RFC 4514 subjects that barely parse, control
characters), unknown fields, non-object documents, deep nesting, invalid UTF-8 and truncated text.
"""

from __future__ import annotations

import json
import random
import urllib.parse
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.fuzzing import der_tree
from tests.fuzzing.gateway_env import FuzzCase, FuzzGateway
from tests.fuzzing.mutate import INTERESTING_TEXTS, base64_forms, mutate_bytes

OCSP_HASHES = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)


class OcspTarget:
    """Makes one OCSP request case at a time."""

    name = "ocsp"

    def __init__(self, env: FuzzGateway) -> None:
        self.env = env
        issued = [holder.certificate for holder in env.issued]
        self.seeds: list[bytes] = []
        for certificate in issued:
            for algorithm in OCSP_HASHES:
                builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, env.ca, algorithm())
                self.seeds.append(builder.build().public_bytes(Encoding.DER))
                nonce = builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False)
                self.seeds.append(nonce.build().public_bytes(Encoding.DER))

    def generate(self, rng: random.Random) -> FuzzCase:
        """One OCSP case: a real request, mutated structurally or byte-wise, by POST or GET."""
        der = rng.choice(self.seeds)
        choice = rng.randrange(10)
        if choice < 5:
            der, what = der_tree.mutate_der(rng, der, rng.randrange(1, 4)), "tree"
        elif choice < 7:
            der, what = mutate_bytes(rng, der), "bytes"
        elif choice == 7:  # two CertIDs, or the same one twice
            root = der_tree.parse(der)
            requests = root.children[0].children[-1] if root.children and root.children[0].children else None
            if requests is not None and requests.children:
                requests.children.append(der_tree.parse(rng.choice(requests.children).encode()))
            der, what = root.encode(), "two-certids"
        else:
            what = "valid"
        if rng.random() < 0.35:
            text = base64_forms(rng, der)
            quoted = rng.choice((urllib.parse.quote(text, safe=""), urllib.parse.quote(text, safe="/+="), text))
            return FuzzCase(self.name, "GET", "/ocsp/" + quoted.lstrip("/"), note=f"ocsp GET {what}")
        headers = {"Content-Type": rng.choice(("application/ocsp-request", "application/octet-stream", ""))}
        return FuzzCase(self.name, "POST", "/ocsp", body=der, headers=headers, note=f"ocsp POST {what}")


FIELDS = ("device_id", "profile", "ttl_seconds", "uses", "expected_subject")
SUBJECTS = (
    "CN=device1",
    "CN=device1,O=Example",
    "CN=a+CN=b",
    "CN=",
    "=x",
    "CN=\\",
    "CN=#0400",
    "CN=#zz",
    "1.2.3.4=#0c03616263",
    "2.5.4.3=#1f00",
    "CN=\\00",
    "CN=é,O=\ud800",
    "CN=" + "x" * 70,
    ",,,",
    "CN=a;O=b",
    'CN="quoted"',
)


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 3 else 9)
    if choice == 0:
        return rng.choice((0, 1, -1, 59, 60, 3600, 2592000, 2592001, 10**30, -(10**30), 1000, 1001))
    if choice == 1:
        return rng.choice((True, False, None))
    if choice == 2:
        return rng.choice((0.5, 3600.0, 1e309, -0.0, float("nan")))
    if choice in (3, 4, 5):
        return rng.choice(INTERESTING_TEXTS)
    if choice == 6:
        return rng.choice(SUBJECTS)
    if choice == 7:
        return rng.choice(("\ud800", "a\udfffb", "\x7f", "\u2028", "default", "strict", "manual", "nosuch"))
    if choice == 8:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 20)))
    if choice in (9, 10):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    return {rng.choice(FIELDS): _json_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))}


class AdminTarget:
    """Makes one POST /admin/api/scep/challenges case at a time."""

    name = "admin"
    PATH = "/admin/api/scep/challenges"

    def __init__(self, env: FuzzGateway) -> None:
        self.env = env

    def _document(self, rng: random.Random) -> Any:
        if rng.random() < 0.85:
            document: dict[str, Any] = {"device_id": rng.choice(("device1", *INTERESTING_TEXTS))}
            for field in rng.sample(FIELDS, rng.randrange(0, len(FIELDS) + 1)):
                document[field] = _json_value(rng)
            if rng.random() < 0.1:
                document[rng.choice(("extra", "", "__proto__", "Device_ID"))] = 1
            return document
        return _json_value(rng)

    def generate(self, rng: random.Random) -> FuzzCase:
        """One admin API case: a JSON document (or something that is not one) and a token."""
        choice = rng.randrange(20)
        if choice == 0:  # deep nesting
            depth = rng.choice((100, 1000, 50000, 200000))
            body, what = ("[" * depth + "]" * depth).encode(), f"nested-{depth}"
        elif choice == 1:
            body, what = json.dumps(self._document(rng)).encode("utf-16"), "utf-16"
        elif choice == 2:
            body, what = mutate_bytes(rng, json.dumps(self._document(rng)).encode()), "bytes"
        elif choice == 3:
            body, what = rng.choice((b"", b"\xff\xfe", b"null", b"{", b'{"device_id": "\\ud800"}', b"1" * 5000)), "raw"
        else:
            text = json.dumps(self._document(rng), ensure_ascii=rng.random() < 0.5)
            body, what = text.encode("utf-8", "surrogatepass"), "json"
        token = self.env.admin_token if rng.random() < 0.9 else rng.choice(("", "x" * 43, self.env.admin_token + "x"))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": rng.choice(("application/json", "text/plain"))}
        return FuzzCase(self.name, "POST", self.PATH, body=body, headers=headers, https=True, note=f"admin {what}")
