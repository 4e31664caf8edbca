"""Reading a legacy CA's inventory, without a database: a micromdm/scep file depot, an OpenSSL
`ca` database, or a collection of PEM/DER certificates (MDM device exports: device_export.py).

Each reader checks the layout first (InventoryError names the bad argument), then yields the
certificates one at a time with the status the legacy CA recorded. A line or file that cannot be
used becomes a Problem carrying its file name and line number, and reading goes on. Private keys
are never opened: a depot's `ca.key` and any `*.key` file are left alone.

The index format is OpenSSL's `ca` database, which micromdm's depot imitates: six tab-separated
fields, `status` (V valid, R revoked, E expired), `expiry` (YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ),
`revocation` (`date[,reason[,detail]]`, empty unless revoked), `serial` (hex), `file name` (or
`unknown`) and the subject DN in OpenSSL's slash form.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

KINDS = ("micromdm-depot", "openssl-ca", "pem", "csv")
CERTIFICATE_SUFFIXES = (".pem", ".crt", ".cer", ".der")
# RFC 5280 reason names, and OpenSSL's extra index spellings (`ca -crl_hold`, `-crl_compromise`).
_REASONS = {flag.value.lower(): flag.value for flag in x509.ReasonFlags} | {
    "holdinstruction": x509.ReasonFlags.certificate_hold.value,
    "keytime": x509.ReasonFlags.key_compromise.value,
    "cakeytime": x509.ReasonFlags.ca_compromise.value,
}
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
HEX = re.compile(r"[0-9a-f]+")
_TIME_FIELDS = ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))  # YYYY MM DD hh mm ss


class InventoryError(Exception):
    """The inventory cannot be read at all; `argument` names the command-line argument at fault."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument


@dataclass(frozen=True)
class Problem:
    """A line or file skipped: where (`file:line`), a short category for the summary, and why."""

    where: str
    category: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class IndexEntry:
    """One line of an index.txt."""

    line: int
    status: str  # 'V' | 'R' | 'E'
    expires: dt.datetime
    revoked_at: dt.datetime | None
    reason: str | None  # RFC 5280 name
    serial: int
    serial_text: str  # as written, for the file name OpenSSL derives from it
    filename: str | None  # None for 'unknown'
    subject: str


@dataclass(frozen=True)
class InventoryEntry:
    """A certificate an inventory holds, with the status its CA recorded (expired is just notAfter)."""

    where: str
    certificate: x509.Certificate
    status: str = "valid"
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    serial: int | None = None  # the serial its index line names; the certificate must carry it


@dataclass(frozen=True)
class Inventory:
    """An opened inventory: the CA certificates it brings, and its entries (read lazily)."""

    kind: str
    ca_certificates: tuple[x509.Certificate, ...]
    size: int  # how many entries (and problems) `entries` yields: the length of a progress bar
    entries: Iterable[InventoryEntry | Problem]


# -- index.txt -------------------------------------------------------------------------------------


def parse_openssl_time(text: str) -> dt.datetime:
    """An index time: UTCTime YYMMDDHHMMSSZ (RFC 5280: years 50-99 are 19xx) or GeneralizedTime."""
    if not text.endswith("Z") or not text[:-1].isdigit() or len(text) not in (13, 15):
        raise ValueError(f"{text!r} is not a time like 271127080015Z")
    digits = text[:-1]
    if len(digits) == 12:
        century = "19" if int(digits[:2]) >= 50 else "20"
        digits = century + digits
    year, month, day, hour, minute, second = (int(digits[a:b]) for a, b in _TIME_FIELDS)
    try:  # by hand: strptime costs 25 µs, twice a line of a 100,000-line index
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid time") from None


def parse_index_line(text: str, line: int) -> IndexEntry:
    """One index.txt line; ValueError saying what is wrong with it."""
    fields = text.split("\t")
    if len(fields) != 6:
        raise ValueError(f"expected 6 tab-separated fields, found {len(fields)}")
    status, expiry, revocation, serial_text, filename, subject = fields
    if status not in ("V", "R", "E"):
        raise ValueError(f"unknown status {status!r} (V, R or E)")
    expires = parse_openssl_time(expiry)
    revoked_at, reason = None, None
    if status == "R":
        if not revocation:
            raise ValueError("status R without a revocation date")
        when, _, rest = revocation.partition(",")
        revoked_at = parse_openssl_time(when)
        if rest:
            name = rest.split(",")[0]
            reason = _REASONS.get(name.lower())
            if reason is None:
                raise ValueError(f"unknown revocation reason {name!r}")
    if not HEX.fullmatch(serial_text.lower()):
        raise ValueError(f"serial {serial_text!r} is not hexadecimal")
    return IndexEntry(
        line=line,
        status=status,
        expires=expires,
        revoked_at=revoked_at,
        reason=reason,
        serial=int(serial_text, 16),
        serial_text=serial_text,
        filename=None if filename in ("", "unknown") else filename,
        subject=subject,
    )


def parse_index(text: str, source: str) -> list[IndexEntry | Problem]:
    """Every line of an index.txt, blank lines left out; bad lines as Problems with their number."""
    items: list[IndexEntry | Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            items.append(parse_index_line(raw.rstrip("\r"), number))
        except ValueError as exc:
            items.append(Problem(f"{source}:{number}", "malformed index line", f"malformed index line: {exc}"))
    return items


# -- files -----------------------------------------------------------------------------------------


def read_file(path: Path, argument: str, what: str) -> bytes:
    """A file's bytes; InventoryError naming `argument` when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(argument, f"{path}: no {what} there") from None
    except IsADirectoryError:
        raise InventoryError(argument, f"{path} is a directory, not {what}") from None
    except OSError as exc:
        raise InventoryError(argument, f"cannot read {path}: {exc.strerror}") from None


def load_ca_certificate(path: Path, argument: str) -> x509.Certificate:
    """The legacy CA's certificate (PEM or DER); a certificate marked cA=FALSE is refused."""
    data = read_file(path, argument, "CA certificate")
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise InventoryError(argument, f"{path} holds no readable X.509 certificate") from None
    if not is_ca(cert, v1_root=True):
        raise InventoryError(argument, f"{path} is not a CA certificate (no basicConstraints cA)")
    return cert


def is_ca(cert: x509.Certificate, *, v1_root: bool = False) -> bool:
    """Whether basicConstraints says cA; with `v1_root`, a self-issued certificate without the
    extension counts too (an X.509 v1 root, as old OpenSSL set-ups made them)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return v1_root and cert.issuer == cert.subject
    except ValueError:  # an extension cryptography cannot parse
        return False


def _load_certificate_file(path: Path, where: str) -> x509.Certificate | Problem:
    if path.suffix.lower() == ".key":
        return Problem(where, "unreadable certificate file", f"{path.name} is a key file, not read")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Problem(where, "certificate file missing", f"certificate file {path} is missing")
    except OSError as exc:
        return Problem(where, "unreadable certificate file", f"cannot read {path}: {exc.strerror}")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return Problem(where, "unreadable certificate file", f"{path} holds no readable certificate")


def _indexed_entries(
    items: Sequence[IndexEntry | Problem], index: Path, certs_dir: Path, default_reason: str | None
) -> Iterator[InventoryEntry | Problem]:
    for item in items:
        if isinstance(item, Problem):
            yield item
            continue
        where = f"{index}:{item.line}"
        if item.filename is not None:
            path = certs_dir / item.filename
        else:  # `openssl ca` names the file after the serial as the index writes it
            path = certs_dir / f"{item.serial_text}.pem"
            if not path.exists():
                path = certs_dir / f"{item.serial_text.lower()}.pem"
        loaded = _load_certificate_file(path, where)
        if isinstance(loaded, Problem):
            yield loaded
            continue
        revoked = item.status == "R"
        yield InventoryEntry(
            where=where,
            certificate=loaded,
            status="revoked" if revoked else "valid",
            revoked_at=item.revoked_at,
            reason=(item.reason or default_reason) if revoked else None,
            serial=item.serial,
        )


def _read_index(index: Path, argument: str) -> list[IndexEntry | Problem]:
    text = read_file(index, argument, "index.txt").decode("utf-8", "replace")
    return parse_index(text, str(index))


def open_micromdm_depot(depot: Path) -> Inventory:
    """A micromdm/scep file depot: ca.pem, index.txt and `<cn>.<serial decimal>.pem` per certificate.

    micromdm writes no revocation reason: it marks a certificate R only when the same subject
    enrolls again (its depot's HasCN), so a reason-less R line is recorded as superseded. It writes
    that revocation date in the server's local time with a `Z`; it is read as UTC, as written.
    """
    if not depot.is_dir():
        raise InventoryError("PATH", f"{depot} is not a directory (a micromdm depot holds ca.pem and index.txt)")
    for name in ("ca.pem", "index.txt"):
        if not (depot / name).exists():
            raise InventoryError("PATH", f"{depot} is not a micromdm depot: it has no {name}")
    ca = load_ca_certificate(depot / "ca.pem", "PATH")
    items = _read_index(depot / "index.txt", "PATH")
    entries = _indexed_entries(items, depot / "index.txt", depot, x509.ReasonFlags.superseded.value)
    return Inventory("micromdm-depot", (ca,), len(items), entries)


def open_openssl_ca(path: Path, *, ca_cert: Path | None = None, certs_dir: Path | None = None) -> Inventory:
    """An OpenSSL `ca` database: PATH is its directory (index.txt, cacert.pem, newcerts/) or its
    index file; --ca-cert and --certs-dir name the others when they live elsewhere."""
    if path.is_dir():
        index, home = path / "index.txt", path
    elif path.exists():
        index, home = path, path.parent
    else:
        raise InventoryError("PATH", f"{path}: no such file or directory")
    if not index.is_file():
        raise InventoryError("PATH", f"{path} holds no index.txt: not an OpenSSL CA directory (or name its index file)")
    ca = load_ca_certificate(ca_cert, "--ca-cert") if ca_cert else _default_openssl_ca(home)
    certs = certs_dir if certs_dir is not None else home / "newcerts"
    if not certs.is_dir():
        argument = "--certs-dir" if certs_dir is not None else "PATH"
        raise InventoryError(argument, f"{certs} is not a directory of issued certificates (name it with --certs-dir)")
    items = _read_index(index, "PATH")
    return Inventory("openssl-ca", (ca,), len(items), _indexed_entries(items, index, certs, None))


def _default_openssl_ca(home: Path) -> x509.Certificate:
    for name in ("cacert.pem", "ca.pem", "ca.crt"):
        if (home / name).is_file():
            return load_ca_certificate(home / name, "PATH")
    raise InventoryError("--ca-cert", f"no cacert.pem in {home}: name the CA certificate with --ca-cert")


def read_certificate_blocks(data: bytes, source: str) -> list[tuple[str, x509.Certificate | Problem]]:
    """Every certificate of a PEM file with where it starts (`file:line`; bad blocks as Problems), or
    one DER certificate."""
    if b"-----BEGIN" not in data:
        try:
            return [(source, x509.load_der_x509_certificate(data))]
        except ValueError:
            return [(source, Problem(source, "unreadable certificate file", "neither PEM nor a DER certificate"))]
    found: list[tuple[str, x509.Certificate | Problem]] = []
    line, counted = 1, 0
    for match in _PEM_BLOCK.finditer(data):
        line += data.count(b"\n", counted, match.start())
        counted = match.start()
        where = f"{source}:{line}"
        try:
            found.append((where, x509.load_pem_x509_certificate(match.group(0))))
        except ValueError:
            found.append((where, Problem(where, "unreadable certificate", "unreadable PEM certificate")))
    if not found:
        found.append((source, Problem(source, "unreadable certificate file", "no PEM certificate in it")))
    return found


def open_pem(path: Path) -> Inventory:
    """A PEM bundle (or DER file), or a directory of .pem/.crt/.cer/.der files: the CA certificates
    in it are returned apart, every other certificate is an entry (status valid: a bundle has none)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in CERTIFICATE_SUFFIXES and p.is_file())
        if not files:
            raise InventoryError("PATH", f"{path} holds no .pem, .crt, .cer or .der file")
    elif path.exists():
        files = [path]
    else:
        raise InventoryError("PATH", f"{path}: no such file or directory")
    cas: list[x509.Certificate] = []
    items: list[InventoryEntry | Problem] = []
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            if path == file:
                raise InventoryError("PATH", f"cannot read {file}: {exc.strerror}") from None
            items.append(Problem(str(file), "unreadable certificate file", f"cannot read it: {exc.strerror}"))
            continue
        for where, found in read_certificate_blocks(data, str(file)):
            if isinstance(found, Problem):
                items.append(found)
            elif is_ca(found):
                cas.append(found)
            else:
                items.append(InventoryEntry(where, found))
    if path == files[0] and not cas and not any(isinstance(i, InventoryEntry) for i in items):
        raise InventoryError("PATH", f"{path} holds no readable certificate (is it a {path.suffix or 'PEM'} file?)")
    return Inventory("pem", tuple(cas), len(items), items)


def open_inventory(kind: str, path: Path, *, ca_cert: Path | None = None, certs_dir: Path | None = None) -> Inventory:
    """Open an inventory of certificates (every kind but csv)."""
    if kind == "micromdm-depot":
        return open_micromdm_depot(path)
    if kind == "openssl-ca":
        return open_openssl_ca(path, ca_cert=ca_cert, certs_dir=certs_dir)
    if kind == "pem":
        return open_pem(path)
    raise ValueError(f"not a certificate inventory kind: {kind!r}")
