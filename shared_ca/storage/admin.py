"""Admin tokens: the bearer credentials of the admin API.

A token is `secrets.token_urlsafe(32)` (256 random bits), so the stored form is a fast hash (hex
SHA-256, DESIGN.md "Where time goes"): a slow password hash buys nothing against a secret nobody
can guess, and would cost every admin request milliseconds. The token itself is shown once, when
it is created, and is never stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.schema import admin_tokens

ADMIN_SCOPE = "admin"
TOKEN_BYTES = 32
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SCOPE_OK = re.compile(r"[a-z][a-z0-9._-]{0,31}")


def admin_token_sha256(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token_name(name: str) -> str:
    """`name` if it can name a token (it is also the HTTP Basic user name, so no ':'); else ValueError."""
    if not _NAME_OK.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a token name: 1-64 characters of letters, digits and . _ @ -, starting with a"
            " letter or digit"
        )
    return name


@dataclass(frozen=True)
class AdminTokenRecord:
    """An admin token as stored (its hash, never the token)."""

    id: int
    name: str
    token_sha256: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    disabled_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class AdminTokenUse:
    """What a token was presented for, for its audit record: the HTTP method, path and client address."""

    method: str
    path: str
    client: str | None = None


MAX_AUDITED_PATH = 512


@dataclass(frozen=True)
class NewAdminToken:
    """A token just created: the record and the token itself, which exists nowhere else."""

    record: AdminTokenRecord
    token: str

    def __repr__(self) -> str:
        return f"NewAdminToken({self.record!r}, token=<secret>)"


def _record(row: RowMapping) -> AdminTokenRecord:
    return AdminTokenRecord(
        id=row["id"],
        name=row["name"],
        token_sha256=row["token_sha256"],
        scopes=tuple(s for s in row["scopes"].split(",") if s),
        created_at=row["created_at"],
        created_by=row["created_by"],
        last_used_at=row["last_used_at"],
        disabled_at=row["disabled_at"],
    )


class AdminTokens:
    """Create, authenticate, list and disable admin tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_admin_token(
        self, name: str, *, created_by: str, now: dt.datetime, scopes: Sequence[str] = (ADMIN_SCOPE,)
    ) -> NewAdminToken:
        """A new token named `name` (unique, also among disabled ones); Conflict when the name is taken."""
        check_token_name(name)
        if not scopes or any(not _SCOPE_OK.fullmatch(s) for s in scopes):
            raise ValueError(f"scopes must be a non-empty list of lower-case words, not {list(scopes)!r}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            with self.db.write() as conn:
                row = (
                    conn.execute(
                        insert(admin_tokens)
                        .values(
                            name=name,
                            token_sha256=admin_token_sha256(token),
                            scopes=",".join(scopes),
                            created_at=now,
                            created_by=created_by,
                        )
                        .returning(*admin_tokens.c)
                    )
                    .mappings()
                    .one()
                )
                detail = {"token": row["id"], "name": name, "scopes": list(scopes)}
                write_audit(conn, AuditEvent(created_by, "admin_token.created", detail=detail), now)
        except IntegrityError as exc:
            raise Conflict(f"an admin token named {name!r} already exists") from exc
        return NewAdminToken(_record(row), token)

    def authenticate_admin_token(
        self, token: str, now: dt.datetime, *, use: AdminTokenUse | None = None
    ) -> AdminTokenRecord | None:
        """The active token `token` is, with last_used_at set to `now` (and, given its `use`, an audit
        record 'admin_token.used' in the same transaction); None for unknown or disabled.

        Looked up by its hash (the database compares hashes, which an attacker cannot steer byte by
        byte); one conditional UPDATE, so a token disabled concurrently is not used afterwards.
        """
        digest = admin_token_sha256(token)
        t = admin_tokens.c
        with self.db.write() as conn:
            row = (
                conn.execute(
                    update(admin_tokens)
                    .where(t.token_sha256 == digest, t.disabled_at.is_(None))
                    .values(last_used_at=now)
                    .returning(*admin_tokens.c)
                )
                .mappings()
                .first()
            )
            if row is not None and use is not None:
                detail = {
                    "token": row["id"],
                    "name": row["name"],
                    "method": use.method[:16],
                    "path": use.path[:MAX_AUDITED_PATH],
                    "client": use.client,
                }
                write_audit(conn, AuditEvent(f"admin-token:{row['name']}", "admin_token.used", detail=detail), now)
        if row is None or not hmac.compare_digest(row["token_sha256"], digest):
            return None
        return _record(row)

    def admin_token_for_secret(self, token: str) -> AdminTokenRecord | None:
        """The token `token` is, active or not, without touching it (to log why it was refused)."""
        with self.db.read() as conn:
            row = (
                conn.execute(select(admin_tokens).where(admin_tokens.c.token_sha256 == admin_token_sha256(token)))
                .mappings()
                .first()
            )
        return _record(row) if row else None

    def admin_token(self, name: str) -> AdminTokenRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(admin_tokens).where(admin_tokens.c.name == name)).mappings().first()
        return _record(row) if row else None

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        """Every token, disabled ones too, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(admin_tokens).order_by(admin_tokens.c.id)).mappings().all()
        return [_record(r) for r in rows]

    def disable_admin_token(self, name: str, *, actor: str, now: dt.datetime) -> AdminTokenRecord:
        """Disable the token named `name` for good; NotFound when there is none. Disabling twice is a no-op."""
        t = admin_tokens.c
        with self.db.write() as conn:
            row = (
                conn.execute(
                    update(admin_tokens)
                    .where(t.name == name, t.disabled_at.is_(None))
                    .values(disabled_at=now)
                    .returning(*admin_tokens.c)
                )
                .mappings()
                .first()
            )
            if row is not None:
                detail = {"token": row["id"], "name": name}
                write_audit(conn, AuditEvent(actor, "admin_token.disabled", detail=detail), now)
        if row is not None:
            return _record(row)
        existing = self.admin_token(name)
        if existing is None:
            raise NotFound(f"no admin token named {name!r}")
        return existing
