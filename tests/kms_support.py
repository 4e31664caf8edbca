"""A SoftHSM2 token of its own for the PKCS#11 tests: a token directory, its softhsm2.conf, a PIN file.

Debian's softhsm2 (scripts/test installs it) provides the module and softhsm2-util.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_der_private_key

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
USER_PIN, SO_PIN = "1234", "5678"


@dataclass(frozen=True)
class SoftHsm:
    """One initialized SoftHSM2 token (label `label`) whose objects live under `directory`."""

    directory: Path
    conf: Path
    pin_file: Path
    label: str

    def uri(self, *, pin_file: Path | None = None, label: str | None = None) -> str:
        """The keys.kms URI, step-ca style (module-path in the path part)."""
        pin = pin_file or self.pin_file
        return f"pkcs11:module-path={SOFTHSM_MODULE};token={label or self.label}?pin-source=file://{pin}"

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def softhsm_token(directory: Path, label: str = "gw") -> SoftHsm:
    """`softhsm2-util --init-token --free` in a token directory of its own, and a 0600 PIN file."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    command = ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN]
    done = subprocess.run(
        command,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pin_file = directory / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    return SoftHsm(directory, conf, pin_file, label)


def private_key_files(directory: Path) -> list[str]:
    """Every file under `directory` (relative, sorted) that holds a PEM or DER private key, by its markers
    or by loading it as DER."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:  # PEM: PRIVATE KEY, RSA/EC PRIVATE KEY, ENCRYPTED PRIVATE KEY
            found.append(path.relative_to(directory).as_posix())
            continue
        try:
            load_der_private_key(data, password=None)
        except (ValueError, TypeError):
            continue
        found.append(path.relative_to(directory).as_posix())
    return found
