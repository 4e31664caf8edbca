"""Which SCEP client a device runs, told from how it talks (its SCEP fingerprint).

Recognised at every SCEP contact from what the request shows: the User-Agent, the path and HTTP
method and version, the Content-Type of a POST, the message type, the transactionID's shape, and
the envelope cipher and digest. What each client sends was captured from the real clients
(tests/vectors, shared/INTEROP.md) or is documented by their makers:

- Apple MDM (iOS, iPadOS, macOS): a User-Agent naming CFNetwork and Darwin, or the MDM agents
  (`profiled`, `mdmclient`, `iOS`/`iPhone`/`Macintosh`);
- Windows and Intune through NDES: `Mozilla/4.0 (compatible; Win32; NDES client)`, or the NDES path
  `/certsrv/mscep/mscep.dll`;
- Cisco IOS: `Mozilla/4.0 (compatible; MSIE 5.0; Cisco PKI)`;
- micromdm's scepclient: Go's `Go-http-client/1.1`, POST with `application/octet-stream`, always
  DES-CBC and SHA-1 (captured): a Go client with another cipher or digest is not it;
- certmonger: no User-Agent, PKIOperation by GET, a transactionID of decimal digits (the SHA-256 of
  its public key as a number; captured);
- jscep: Java's `Java/<version>` (HttpURLConnection's default);
- sscep: a User-Agent naming sscep, or an HTTP/1.0 request with none (its own minimal HTTP client);
- anything else: unknown.

The family is a hint for the migration report (which devices have an EST client), never an
authorization input: every one of these facts is the client's to choose.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class ClientFamily(enum.StrEnum):
    APPLE = "apple"
    WINDOWS = "windows"
    CISCO_IOS = "cisco-ios"
    CERTMONGER = "certmonger"
    SSCEP = "sscep"
    SCEPCLIENT = "micromdm-scepclient"
    JSCEP = "jscep"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ScepFingerprint:
    """What one SCEP request shows of its client (any of it may be missing)."""

    user_agent: str | None = None
    path: str | None = None
    method: str | None = None  # GET | POST
    http_version: str | None = None  # HTTP/1.0 | HTTP/1.1
    content_type: str | None = None
    message_type: str | None = None  # the MessageType's name, e.g. "PKCSReq"
    transaction_id: str | None = None
    cipher: str | None = None  # scep.envelope.ContentCipher's value, e.g. "des"
    digest: str | None = None  # e.g. "sha1"


_APPLE = re.compile(r"\b(CFNetwork|Darwin|profiled|mdmclient|iPhone|iPad|Macintosh|iOS|macOS)\b", re.IGNORECASE)
_NDES_AGENT = re.compile(r"NDES client", re.IGNORECASE)
_CISCO = re.compile(r"Cisco PKI", re.IGNORECASE)
_GO = re.compile(r"^Go-http-client/", re.IGNORECASE)
_JAVA = re.compile(r"^Java/\d", re.IGNORECASE)
_SSCEP = re.compile(r"\bsscep\b", re.IGNORECASE)
_DECIMAL = re.compile(r"[0-9]{30,}")


def recognise_client(fp: ScepFingerprint) -> ClientFamily:
    """The family of the SCEP client that sent the request (UNKNOWN when nothing tells)."""
    agent = (fp.user_agent or "").strip()
    path = (fp.path or "").lower()
    if agent:
        if _NDES_AGENT.search(agent):
            return ClientFamily.WINDOWS
        if _CISCO.search(agent):
            return ClientFamily.CISCO_IOS
        if _SSCEP.search(agent):
            return ClientFamily.SSCEP
        if _APPLE.search(agent):
            return ClientFamily.APPLE
        if _JAVA.search(agent):
            return ClientFamily.JSCEP
        if _GO.search(agent) and fp.cipher in (None, "des") and fp.digest in (None, "sha1"):
            # micromdm's scepclient: Go's HTTP client, and always DES + SHA-1 (another Go client is not it)
            return ClientFamily.SCEPCLIENT
    if "/certsrv/mscep/" in path:
        return ClientFamily.WINDOWS
    if not agent:
        if fp.http_version == "HTTP/1.0":
            return ClientFamily.SSCEP
        if fp.method == "GET" and fp.transaction_id is not None and _DECIMAL.fullmatch(fp.transaction_id):
            return ClientFamily.CERTMONGER
    return ClientFamily.UNKNOWN


def family_from_user_agent(user_agent: str | None) -> ClientFamily:
    """The family as far as a User-Agent alone tells (what a device row kept before families were
    recognised: migration 0009 fills them in from it)."""
    return recognise_client(ScepFingerprint(user_agent=user_agent)) if user_agent else ClientFamily.UNKNOWN


@dataclass(frozen=True)
class ScepClient:
    """Transport facts about the requester, for events, lockout, logs and its client family."""

    address: str | None
    user_agent: str | None
    waited: float = 0.0  # seconds the request waited behind others for its worker (admission control)
    path: str | None = None
    method: str | None = None
    http_version: str | None = None
    content_type: str | None = None

    def family(
        self, message_type: str, transaction_id: str | None, cipher: str | None, digest: str | None
    ) -> str | None:
        """The SCEP client family this request shows; None when nothing tells."""
        fingerprint = ScepFingerprint(
            user_agent=self.user_agent,
            path=self.path,
            method=self.method,
            http_version=self.http_version,
            content_type=self.content_type,
            message_type=message_type,
            transaction_id=transaction_id,
            cipher=cipher,
            digest=digest,
        )
        family = recognise_client(fingerprint)
        return None if family is ClientFamily.UNKNOWN else family.value
