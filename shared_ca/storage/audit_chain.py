"""The audit trail's hash chains: how a record is hashed, and how a chain is checked.

Each node (`audit.node`, default the host name) appends to its own chain: its records are numbered
1, 2, 3 … (`seq`), and each carries the hash of its predecessor (`prev_hash`; the first one
GENESIS) and its own `hash`, hex SHA-256 over a canonical encoding of every field it stores but its
row id (`record_digest`). The chain's head (`audit_chain_heads`: the node's last seq and hash) is
the row a writer locks to append, so the writers of one node, on any number of processes, take turns.

What a check finds, record by record (`check_chain`): a record whose fields no longer give its hash
(changed); a gap in the numbers (deleted); a record whose hash is right for another place in the
chain (moved: out of order); a record that does not link to its predecessor (a predecessor changed
and rehashed); and, against the head, the newest records deleted or records appended past it. What it
cannot find: someone with write access to the database who rewrites a whole chain and its head from
some record on. Only an anchor kept elsewhere (a head printed by `gateway audit verify`, a copy sent
to syslog) shows that; `Anchor` checks one.

The encoding is version 1 and fixed: records written under it keep verifying whatever changes later.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

GENESIS = "0" * 64
"""The `prev_hash` of a chain's first record."""
LEGACY_NODE = "legacy"
"""The chain revision 0010 put the records written before it in (chained at the upgrade)."""
MAX_NODE = 64
_NODE_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASH_OK = re.compile(r"[0-9a-f]{64}")


def check_node_name(name: str) -> str:
    """`name` if it can name a chain (1-64 letters, digits and . _ -, starting with a letter or digit);
    else ValueError."""
    if not _NODE_OK.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a node name: 1-{MAX_NODE} letters, digits and . _ -, starting with a letter or digit"
        )
    return name


def format_time(when: dt.datetime) -> str:
    """The fixed text of a record's time in its hash: UTC, microseconds, 'Z'."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ChainedFields:
    """What a record's hash covers: every stored field but the row id. `detail` is the stored JSON text."""

    node: str
    seq: int
    prev_hash: str
    occurred_at: dt.datetime
    actor: str
    action: str
    issuer_id: int | None
    serial_hex: str | None
    detail: str


def record_digest(fields: ChainedFields) -> str:
    """Hex SHA-256 of the canonical encoding (version 1): a JSON object with sorted keys, no spaces and
    ASCII only, so every writer and checker produces the same bytes."""
    encoded = json.dumps(
        {
            "v": 1,
            "node": fields.node,
            "seq": fields.seq,
            "prev_hash": fields.prev_hash,
            "occurred_at": format_time(fields.occurred_at),
            "actor": fields.actor,
            "action": fields.action,
            "issuer_id": fields.issuer_id,
            "serial_hex": fields.serial_hex,
            "detail": fields.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChainedRecord:
    """A stored record as the check reads it: its row id, its fields and its stored hash."""

    id: int
    fields: ChainedFields
    hash: str


@dataclass(frozen=True)
class ChainHead:
    node: str
    last_seq: int
    last_hash: str


@dataclass(frozen=True)
class Anchor:
    """A head recorded elsewhere: the chain of `node` must still hold seq `seq` with hash `hash`."""

    node: str
    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """NODE:SEQ:HASH (as `gateway audit verify` prints it); ValueError naming what is wrong."""
        parts = text.strip().rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"{text!r} is not NODE:SEQ:HASH")
        node, seq_text, digest = parts
        check_node_name(node)
        if not seq_text.isdigit() or int(seq_text) < 1:
            raise ValueError(f"{seq_text!r} is not a sequence number (1, 2, …)")
        if not _HASH_OK.fullmatch(digest.lower()):
            raise ValueError(f"{digest!r} is not a hex SHA-256 (64 hex digits)")
        return cls(node, int(seq_text), digest.lower())

    def __str__(self) -> str:
        return f"{self.node}:{self.seq}:{self.hash}"


class ProblemKind:
    """What is wrong with a record or a chain (the `kind` of a ChainProblem, as --json prints it)."""

    CHANGED = "changed"
    MISSING = "missing"
    OUT_OF_ORDER = "out_of_order"
    BROKEN_LINK = "broken_link"
    DUPLICATE = "duplicate"
    NO_HEAD = "no_head"
    BEYOND_HEAD = "beyond_head"
    HEAD_MISMATCH = "head_mismatch"
    ANCHOR_MISMATCH = "anchor_mismatch"
    ANCHOR_MISSING = "anchor_missing"


@dataclass(frozen=True)
class ChainProblem:
    """One finding: the records concerned (seq, or seq..last_seq; the row id when one record) and why."""

    node: str
    kind: str
    message: str
    seq: int | None = None
    last_seq: int | None = None
    record_id: int | None = None

    def where(self) -> str:
        """'node N seq S (id I)', 'node N seq S..T' or 'node N'."""
        text = f"node {self.node}"
        if self.seq is not None:
            text += f" seq {self.seq}" if self.last_seq in (None, self.seq) else f" seq {self.seq}..{self.last_seq}"
        if self.record_id is not None:
            text += f" (id {self.record_id})"
        return text


@dataclass(frozen=True)
class ChainReport:
    """One node's chain as checked: how many records, its head, and what is wrong (nothing: intact)."""

    node: str
    records: int
    head: ChainHead | None
    problems: tuple[ChainProblem, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


class ChainLookup(Protocol):
    """Where records sit in a chain, asked only of a record whose fields do not give its hash."""

    def seq_with_hash(self, digest: str) -> int | None:
        """The seq of the record whose stored hash is `digest`, or None."""
        ...

    def seq_linking_to(self, digest: str) -> int | None:
        """The seq of the record whose prev_hash is `digest` (its successor), or None."""
        ...


MAX_ANALYSED = 1000
"""Records per chain whose place is looked for (two look-ups each); later mismatches are reported changed."""


def check_chain(
    node: str,
    records: Iterable[ChainedRecord],
    head: ChainHead | None,
    lookup: ChainLookup,
    anchors: Iterable[Anchor] = (),
) -> ChainReport:
    """Check one node's chain, `records` in seq order; see the module docstring for what is found."""
    problems: list[ChainProblem] = []
    wanted = {a.seq: a for a in anchors if a.node == node}
    expected_seq = 1
    previous_hash = GENESIS
    previous_ok = True  # whether the previous record's fields gave its hash
    count = 0
    analysed = 0
    for record in records:
        count += 1
        fields = record.fields
        if fields.seq < expected_seq:  # only possible with the unique constraint dropped
            problems.append(
                ChainProblem(node, ProblemKind.DUPLICATE, "a second record with this seq", fields.seq, None, record.id)
            )
            continue
        gap = fields.seq > expected_seq
        if gap:
            problems.append(
                ChainProblem(
                    node,
                    ProblemKind.MISSING,
                    "missing: deleted from the chain",
                    expected_seq,
                    fields.seq - 1,
                )
            )
        own_ok = record_digest(fields) == record.hash
        if not own_ok:
            analysed += 1
            problems.append(_explain_mismatch(node, record, lookup if analysed <= MAX_ANALYSED else None))
        elif not gap and previous_ok and fields.prev_hash != previous_hash:
            problems.append(
                ChainProblem(
                    node,
                    ProblemKind.BROKEN_LINK,
                    f"does not link to seq {fields.seq - 1}: that record (or this one) was changed and its hash "
                    "recomputed",
                    fields.seq,
                    None,
                    record.id,
                )
            )
        anchor = wanted.pop(fields.seq, None)
        if anchor is not None and anchor.hash != record.hash:
            problems.append(
                ChainProblem(
                    node,
                    ProblemKind.ANCHOR_MISMATCH,
                    f"hash {record.hash} differs from the anchor's {anchor.hash}: the chain was rewritten",
                    fields.seq,
                    None,
                    record.id,
                )
            )
        expected_seq = fields.seq + 1
        previous_hash = record.hash
        previous_ok = own_ok
    last_seq = expected_seq - 1
    # A newest record already found changed or moved explains a head that differs: not reported twice.
    problems.extend(_check_head(node, head, last_seq, previous_hash if previous_ok else None, count))
    for anchor in wanted.values():
        problems.append(
            ChainProblem(
                node, ProblemKind.ANCHOR_MISSING, "the anchor's record is not in the chain: deleted", anchor.seq
            )
        )
    return ChainReport(node, count, head, tuple(problems))


def _explain_mismatch(node: str, record: ChainedRecord, lookup: ChainLookup | None) -> ChainProblem:
    """A record whose fields do not give its stored hash: moved, when its hash is right for another
    place (after the record its prev_hash names, or before the record that links to it); else changed."""
    fields = record.fields
    candidates: list[int] = []
    if lookup is not None:
        predecessor = 0 if fields.prev_hash == GENESIS else lookup.seq_with_hash(fields.prev_hash)
        successor = lookup.seq_linking_to(record.hash)
        candidates = [predecessor + 1 if predecessor is not None else 0, successor - 1 if successor is not None else 0]
    for seq in dict.fromkeys(candidates):
        if seq >= 1 and seq != fields.seq and record_digest(replace(fields, seq=seq)) == record.hash:
            return ChainProblem(
                node, ProblemKind.OUT_OF_ORDER, f"out of order: written as seq {seq}", fields.seq, None, record.id
            )
    return ChainProblem(
        node, ProblemKind.CHANGED, "changed: its fields do not give its hash", fields.seq, None, record.id
    )


def _check_head(
    node: str, head: ChainHead | None, last_seq: int, last_hash: str | None, count: int
) -> list[ChainProblem]:
    """The chain's end against its head: the newest records deleted, records past the head, a rehashed end."""
    if head is None:
        if count == 0:
            return []
        return [
            ChainProblem(
                node, ProblemKind.NO_HEAD, "the chain has no head: its records were not written through it", 1, last_seq
            )
        ]
    if head.last_seq > last_seq:
        return [
            ChainProblem(
                node,
                ProblemKind.MISSING,
                f"missing: the newest records were deleted (the chain head is at seq {head.last_seq})",
                last_seq + 1,
                head.last_seq,
            )
        ]
    if head.last_seq < last_seq:
        return [
            ChainProblem(
                node,
                ProblemKind.BEYOND_HEAD,
                f"past the chain head (seq {head.last_seq}): not written through the chain",
                head.last_seq + 1,
                last_seq,
            )
        ]
    if last_hash is not None and head.last_hash != last_hash:
        return [
            ChainProblem(
                node,
                ProblemKind.HEAD_MISMATCH,
                "the newest record's hash differs from the chain head's: one of them was changed",
                last_seq if last_seq else None,
            )
        ]
    return []
