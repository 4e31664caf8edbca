"""`gateway ca ra-split`: separate SCEP RA keys for a data directory that has one RA.

Issues a signing RA (digitalSignature only) and an encryption RA (keyEncipherment only) under the
current CA, recorded like init's RA, and writes them as new files beside the current RA, whose files
stay untouched: the gateway keeps serving with the one RA until its configuration names the new
pair. The configuration file is the operator's (and every node's): the command returns the four
settings to set there, then each node is restarted with the files copied to it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.config import GatewayConfig
from gateway.runtime import key_passphrase, open_gateway
from shared_ca.keys import (
    KeyType,
    PrivateKey,
    generate_private_key,
    load_certificates,
    write_private_key,
    write_public_file,
)
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_ENCRYPTION_PROFILE, RA_SIGNING_PROFILE

SPLIT_FILES = {  # setting -> the new file, relative to the data directory
    "ra.cert": "ra/ra-signing.crt",
    "ra.key": "ra/ra-signing.key",
    "ra.encryption_cert": "ra/ra-encryption.crt",
    "ra.encryption_key": "ra/ra-encryption.key",
}


class RaSplitError(Exception):
    """`gateway ca ra-split` cannot go on; the message says why in one line."""


@dataclass(frozen=True)
class RaSplitResult:
    settings: dict[str, str]  # the settings to put in the configuration file, by key
    signing: x509.Certificate
    encryption: x509.Certificate


def split_ra(config: GatewayConfig, *, actor: str) -> RaSplitResult:
    """Issue and write a signing RA and an encryption RA; RaSplitError when the RA is split already or
    the files exist (a CAError when the gateway's key material does not load)."""
    if config["ra.encryption_cert"] or config["ra.encryption_key"]:
        raise RaSplitError("the SCEP RA has separate keys already (ra.encryption_cert, ra.encryption_key are set)")
    existing = [str(config.data_dir / name) for name in SPLIT_FILES.values() if (config.data_dir / name).exists()]
    if existing:
        raise RaSplitError(f"{', '.join(existing)} exist already: move them away first")
    gateway = open_gateway(config)  # the CA's key and its issuer record, checked as `serve` checks them
    try:
        if gateway.ra_certificate != load_certificates(config.path("ra.cert"))[0]:
            # After a CA rollover the issuing CA's RA is next_ra.cert, which has no encryption partner.
            raise RaSplitError(
                f"the issuing CA {gateway.authority.name!r} has its RA elsewhere than ra.cert "
                f"({config.path('ra.cert')}): ra-split gives separate keys only to the RA of ra.cert"
            )
        base = gateway.authority.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        prefix = str(base[0].value) if base else "Gateway"
        now = gateway.authority.clock()
        issued: dict[str, tuple[PrivateKey, x509.Certificate]] = {}
        for role, profile in (("signing", RA_SIGNING_PROFILE), ("encryption", RA_ENCRYPTION_PROFILE)):
            key = generate_private_key(KeyType.RSA2048)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix} SCEP RA {role}"[:64])])
            policy = authorize_request(profile, subject, [], key.public_key(), now)
            issued[role] = (key, gateway.authority.issue(policy, protocol="system", actor=actor).certificate)
    finally:
        gateway.storage.db.dispose()
    _install(config, issued)
    return RaSplitResult(dict(SPLIT_FILES), issued["signing"][1], issued["encryption"][1])


def _install(config: GatewayConfig, issued: dict[str, tuple[PrivateKey, x509.Certificate]]) -> None:
    """Write the four files in a staging directory, then move them into place (all or none)."""
    staging = config.data_dir / ".ra-split-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    installed: list[Path] = []
    try:
        passphrase = key_passphrase(config)  # the new keys are protected as the RA's are
        for role, (key, cert) in issued.items():
            prefix = "ra." if role == "signing" else "ra.encryption_"
            write_private_key(staging / SPLIT_FILES[f"{prefix}key"], key, passphrase)
            write_public_file(staging / SPLIT_FILES[f"{prefix}cert"], cert.public_bytes(Encoding.PEM))
        for name in SPLIT_FILES.values():
            target = config.data_dir / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(staging / name, target)
            installed.append(target)
    except BaseException:
        for path in installed:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def settings_toml(settings: dict[str, str]) -> str:
    """The [ra] table of the configuration file that names the new files."""
    lines = [f'{key.removeprefix("ra.")} = "{value}"' for key, value in settings.items()]
    return "\n".join(["[ra]", *lines]) + "\n"
