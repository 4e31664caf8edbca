"""CSR self-signatures made by openssl itself: legacy digests verify, MD5 is refused, tampering is caught."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shared_ca.csr import load_csr, verify_csr_signature
from shared_ca.errors import AlgorithmNotAllowed, BadSignature


@pytest.fixture(scope="module")
def rsa_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csr") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    return path


def _openssl_csr(key: Path, *options: str) -> bytes:
    result = subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=legacy-device", *options],
        check=True,
        capture_output=True,
    )
    return result.stdout


@pytest.mark.parametrize(
    ("options", "digest"),
    [
        pytest.param(("-sha1",), "sha1", id="ok/sha1-legacy-client"),
        pytest.param(("-sha256",), "sha256", id="ok/sha256"),
        pytest.param(("-sha512",), "sha512", id="ok/sha512"),
        pytest.param(("-sha256", "-sigopt", "rsa_padding_mode:pss"), "sha256", id="ok/rsa-pss"),
    ],
)
def test_openssl_signed_csr_verifies(rsa_key_file: Path, options: tuple[str, ...], digest: str) -> None:
    csr = load_csr(_openssl_csr(rsa_key_file, *options))
    assert verify_csr_signature(csr) == digest


def test_md5_signed_csr_is_refused_as_algorithm(rsa_key_file: Path) -> None:
    with pytest.raises(AlgorithmNotAllowed, match="MD5"):
        load_csr(_openssl_csr(rsa_key_file, "-md5"))


def test_tampered_sha1_csr_is_a_bad_signature(rsa_key_file: Path) -> None:
    der = bytearray(x509.load_pem_x509_csr(_openssl_csr(rsa_key_file, "-sha1")).public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # last octet of the signature
    with pytest.raises(BadSignature):
        load_csr(bytes(der))
