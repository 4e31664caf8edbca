"""EST users: the per-user HTTP Basic credentials of EST enrollment, stored hashed.

Two kinds, told apart by how the secret came to be (DESIGN.md "Where time goes"):

- `password`: chosen by a person, so guessable in principle: stored as scrypt
  (`scrypt$14$8$1$<salt b64>$<hash b64>`, n=2**14, r=8, p=1, 16-byte salt), slow on purpose.
- `bootstrap`: generated here (`new_generated_secret`, 192 random bits), for one device, usually
  for a limited number of uses: stored as a salted HMAC-SHA256 (`sha256$<salt b64>$<hash b64>`),
  which costs microseconds and is as safe, since nobody can enumerate 2**192 secrets.

The stored string names its scheme, so either kind can be verified by `check_secret` without
knowing which it is. The hashing lives here, beside the table, so that every package that may
create credentials (the CLI, the migration toolkit) reaches it through `shared_ca` alone; EST's
verifier (`est.auth.verify_secret`) adds a per-process memo on top.

Every rule that must hold across workers is one statement: a use is spent by a single conditional
UPDATE (`consume_use`), so two requests racing for the last use of a credential cannot both win.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import EST_USER_KINDS, Id, UTCDateTime, est_users

_log = logging.getLogger(__name__)

SCRYPT_LOG2_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
GENERATED_SECRET_BYTES = 24  # 192 bits: far beyond guessing, 32 characters in a Basic password
MAX_NAME = 128
MAX_LABEL = 64
MAX_DEVICE_IDENTITY = 255
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_SCRYPT_MAX_LOG2_N = 20  # a stored hash asking for more memory than this is refused, not computed
_NAME_OK = re.compile(rf"[A-Za-z0-9._@-]{{1,{MAX_NAME}}}")


# -- secrets and their stored form ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def scrypt_digest(
    password: str, salt: bytes, log2_n: int = SCRYPT_LOG2_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> bytes:
    """The 32-byte scrypt key of `password` (UTF-8) under `salt`."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**log2_n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)


def hash_password(password: str) -> str:
    """The stored form of a person's password: `scrypt$14$8$1$<salt b64>$<hash b64>`."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = scrypt_digest(password, salt)
    return f"scrypt${SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def hash_generated_secret(secret: str) -> str:
    """The stored form of a secret this gateway generated: `sha256$<salt b64>$<HMAC-SHA256(salt, secret) b64>`."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"sha256${_b64(salt)}${_b64(hmac.digest(salt, secret.encode('utf-8'), 'sha256'))}"


def new_generated_secret() -> str:
    """A fresh high-entropy secret (192 bits, URL-safe base64) for a bootstrap credential."""
    return secrets.token_urlsafe(GENERATED_SECRET_BYTES)


def secret_scheme(stored: str) -> str:
    """The scheme a stored hash names ('scrypt', 'sha256', or whatever unknown word precedes '$')."""
    return stored.split("$", 1)[0]


def check_secret(stored: str, presented: str) -> bool:
    """Whether `presented` is the secret `stored` was made from; constant-time in the comparison.

    An unknown scheme or a malformed stored string is False (and logged: it is our data, not the
    client's, that is wrong). No memo here: see `est.auth.verify_secret`.
    """
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if not (1 <= log2_n <= _SCRYPT_MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16):
                raise ValueError(f"scrypt parameters out of range: {parts[1:4]}")
            salt, expected = _unb64(parts[4]), _unb64(parts[5])
            return hmac.compare_digest(scrypt_digest(presented, salt, log2_n, r, p), expected)
        if parts[0] == "sha256" and len(parts) == 3:
            salt, expected = _unb64(parts[1]), _unb64(parts[2])
            return hmac.compare_digest(hmac.digest(salt, presented.encode("utf-8"), "sha256"), expected)
    except (ValueError, binascii.Error) as exc:
        _log.warning("malformed %s secret hash in the EST user store: %s", secret_scheme(stored)[:16], exc)
        return False
    _log.warning("unknown secret hash scheme %r in the EST user store", secret_scheme(stored)[:16])
    return False


# -- records --------------------------------------------------------------------------------------


def check_est_user_name(name: str) -> str:
    """`name` if it can name an EST user (it is the HTTP Basic user-id, so no ':'); else ValueError."""
    if not _NAME_OK.fullmatch(name):
        raise ValueError(
            f"name {name!r} is not an EST user name: 1-{MAX_NAME} characters of letters, digits and . _ @ -"
        )
    return name


@dataclass(frozen=True)
class EstUserRecord:
    """An EST user as stored (the hash of its secret, never the secret)."""

    id: int
    name: str
    secret_hash: str = field(repr=False)
    kind: str
    labels: tuple[str, ...]  # the EST labels (profile names) it may use; empty: the default label only
    device_identity: str | None
    uses_left: int | None  # None: unlimited
    expires_at: dt.datetime | None
    disabled_at: dt.datetime | None
    last_used_at: dt.datetime | None
    created_at: dt.datetime
    created_by: str

    def status(self, now: dt.datetime) -> str:
        """'disabled', 'expired', 'used up' or 'active' at `now`, checked in that order."""
        if self.disabled_at is not None:
            return "disabled"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.uses_left is not None and self.uses_left <= 0:
            return "used up"
        return "active"


def _record(row: Mapping[Any, Any]) -> EstUserRecord:
    fields = {name: row[name] for name in EstUserRecord.__dataclass_fields__ if name != "labels"}
    return EstUserRecord(**fields, labels=split_labels(row["labels"]))


def split_labels(stored: str | None) -> tuple[str, ...]:
    """The labels of the `labels` column (comma-separated; NULL: none)."""
    return tuple(label for label in (stored or "").split(",") if label)


_u = est_users.c
_BY_NAME = PreparedStatement(select(est_users).where(_u.name == bindparam("name")))  # every Basic log-in
_USER_ID = bindparam("user_id", type_=Id)
_NOW = bindparam("now", type_=UTCDateTime())
# One statement settles a race for the last use: the database re-evaluates the WHERE on the row it
# locks (PostgreSQL) or runs one writer at a time (SQLite), so exactly one of N racers matches.
_CONSUME = (
    update(est_users)
    .where(
        _u.id == _USER_ID,
        _u.disabled_at.is_(None),
        or_(_u.expires_at.is_(None), _u.expires_at > _NOW),
        or_(_u.uses_left.is_(None), _u.uses_left > 0),
    )
    .values(uses_left=_u.uses_left - 1, last_used_at=_NOW)  # NULL - 1 stays NULL (unlimited)
)
_REFUND = update(est_users).where(_u.id == _USER_ID, _u.uses_left.is_not(None)).values(uses_left=_u.uses_left + 1)


class EstUsers:
    """Add, look up, list and disable EST users; spend and refund their uses."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_est_user(
        self,
        name: str,
        secret_hash: str,
        *,
        kind: str,
        created_by: str,
        now: dt.datetime,
        labels: tuple[str, ...] = (),
        device_identity: str | None = None,
        uses_left: int | None = None,
        expires_at: dt.datetime | None = None,
    ) -> EstUserRecord:
        """A new user named `name` (unique, disabled ones included); Conflict when the name is taken.

        `secret_hash` is `hash_password(...)` or `hash_generated_secret(...)`, never the secret.
        """
        check_est_user_name(name)
        if kind not in EST_USER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(EST_USER_KINDS)}, not {kind!r}")
        if secret_scheme(secret_hash) not in ("scrypt", "sha256") or "$" not in secret_hash:
            raise ValueError("secret_hash must be a stored hash (scrypt$... or sha256$...), never the secret itself")
        for label in labels:
            if not 1 <= len(label) <= MAX_LABEL or "," in label:
                raise ValueError(f"label {label!r} must have 1-{MAX_LABEL} characters and no ','")
        if device_identity is not None and not 1 <= len(device_identity) <= MAX_DEVICE_IDENTITY:
            raise ValueError(f"device_identity must have 1-{MAX_DEVICE_IDENTITY} characters")
        if uses_left is not None and uses_left < 1:
            raise ValueError(f"uses_left must be at least 1 (or None: unlimited), not {uses_left}")
        if expires_at is not None and expires_at <= now:
            raise ValueError(f"expires_at must be in the future, not {expires_at.isoformat()}")
        try:
            with self.db.write() as conn:
                row = (
                    conn.execute(
                        insert(est_users)
                        .values(
                            name=name,
                            secret_hash=secret_hash,
                            kind=kind,
                            labels=",".join(dict.fromkeys(labels)) or None,
                            device_identity=device_identity,
                            uses_left=uses_left,
                            expires_at=expires_at,
                            created_at=now,
                            created_by=created_by,
                        )
                        .returning(*est_users.c)
                    )
                    .mappings()
                    .one()
                )
                detail = {"est_user": row["id"], "name": name, "kind": kind, "labels": list(labels), "uses": uses_left}
                write_audit(conn, AuditEvent(created_by, "est_user.created", detail=detail), now)
        except IntegrityError as exc:
            raise Conflict(f"an EST user named {name!r} already exists") from exc
        return _record(row)

    def est_user(self, name: str) -> EstUserRecord | None:
        """The user named `name`, whatever its state; None when there is none."""
        with self.db.read() as conn:
            row = _BY_NAME.first(conn, {"name": name})
        return _record(row) if row else None

    def est_user_by_id(self, user_id: int) -> EstUserRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(est_users).where(_u.id == user_id)).mappings().first()
        return _record(row) if row else None

    def list_est_users(self) -> list[EstUserRecord]:
        """Every user, disabled ones too, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(est_users).order_by(_u.id)).mappings().all()
        return [_record(r) for r in rows]

    def disable_est_user(self, name: str, *, actor: str, now: dt.datetime) -> EstUserRecord:
        """Disable the user named `name` for good; NotFound when there is none, Conflict when it already is."""
        with self.db.write() as conn:
            row = (
                conn.execute(
                    update(est_users)
                    .where(_u.name == name, _u.disabled_at.is_(None))
                    .values(disabled_at=now)
                    .returning(*est_users.c)
                )
                .mappings()
                .first()
            )
            if row is not None:
                detail = {"est_user": row["id"], "name": name}
                write_audit(conn, AuditEvent(actor, "est_user.disabled", detail=detail), now)
        if row is not None:
            return _record(row)
        existing = self.est_user(name)
        if existing is None:
            raise NotFound(f"no EST user named {name!r}")
        assert existing.disabled_at is not None
        raise Conflict(
            f"EST user {name!r} is already disabled", detail=f"disabled at {existing.disabled_at.isoformat()}"
        )

    def consume_use(self, user_id: int, now: dt.datetime) -> bool:
        """Spend one use of the user (none to spend when unlimited) and note `now` as its last use.

        False when the user is gone, disabled, expired at `now` or used up: one conditional UPDATE,
        so of N concurrent attempts on a credential with k uses left exactly k win, on any number of
        workers and hosts.
        """
        with self.db.write() as conn:
            return conn.execute(_CONSUME, {"user_id": user_id, "now": now}).rowcount == 1

    def refund_use(self, user_id: int) -> None:
        """Give back one use spent by `consume_use` when the issuance was then refused (no-op when unlimited)."""
        with self.db.write() as conn:
            conn.execute(_REFUND, {"user_id": user_id})
