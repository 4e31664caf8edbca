"""`gateway audit verify|export`: check the audit trail's hash chains, export the trail.

Both need the database and the configuration only, never the CA's keys.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from gateway.audit_formats import cef_line, jsonl_line, product_version
from gateway.cli.support import FILE, config_options, database_storage, load_cli_config, refuse
from shared_ca.authority import utcnow
from shared_ca.storage.audit_chain import Anchor, ChainProblem, ChainReport, check_node_name

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@click.group("audit")
def audit() -> None:
    """The tamper-evident audit trail: verify its hash chains, export it."""


# -- verify ---------------------------------------------------------------------------------------


@audit.command("verify")
@config_options
@click.option("--node", "nodes", multiple=True, help="Check only this node's chain (repeatable) [default: all].")
@click.option(
    "--expect",
    "expected",
    multiple=True,
    metavar="NODE:SEQ:HASH",
    help="A head printed by an earlier verify and kept elsewhere: the chain must still hold it (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def audit_verify(
    data_dir: Path, config_file: Path | None, nodes: tuple[str, ...], expected: tuple[str, ...], as_json: bool
) -> None:
    """Check every node's hash chain: exit 0 when intact, 1 naming each changed, missing or moved record.

    Prints each chain's head (NODE:SEQ:HASH): keep it outside this database and pass it to a later
    verify with --expect, which shows a chain rewritten since.
    """
    for node in nodes:
        try:
            check_node_name(node)
        except ValueError as exc:
            raise refuse("--node", str(exc)) from None
    anchors = []
    for text in expected:
        try:
            anchors.append(Anchor.parse(text))
        except ValueError as exc:
            raise refuse("--expect", str(exc)) from None
    config = load_cli_config(data_dir, config_file)
    with database_storage(config) as storage:
        if nodes:
            known = set(storage.audit.nodes())
            unknown = [n for n in nodes if n not in known]
            if unknown:
                have = ", ".join(sorted(known)) or "none"
                raise refuse("--node", f"no chain named {unknown[0]!r} (chains: {have})")
        reports = storage.audit.verify(nodes=nodes or None, anchors=anchors)
    problems = sum(len(r.problems) for r in reports)
    if as_json:
        click.echo(json.dumps(_verify_json(reports), indent=2))
    else:
        for report in reports:
            click.echo(_summary_line(report))
            for problem in report.problems:
                click.echo(f"  {problem.where()}: {problem.message}")
        if not reports:
            click.echo("no audit records yet")
        elif not problems:
            click.echo("keep these heads elsewhere; check later with: gateway audit verify --expect NODE:SEQ:HASH")
    if problems:
        broken = sum(1 for r in reports if not r.intact)
        click.echo(f"audit trail NOT intact: {problems} problem(s) in {broken} of {len(reports)} chain(s)", err=True)
        raise SystemExit(1)


def _summary_line(report: ChainReport) -> str:
    head = f"{report.head.node}:{report.head.last_seq}:{report.head.last_hash}" if report.head else "no head"
    state = "intact" if report.intact else f"{len(report.problems)} problem(s)"
    return f"node {report.node}: {report.records} records, head {head}: {state}"


def _problem_json(problem: ChainProblem) -> dict[str, Any]:
    return {
        "kind": problem.kind,
        "seq": problem.seq,
        "last_seq": problem.last_seq if problem.last_seq is not None else problem.seq,
        "id": problem.record_id,
        "message": problem.message,
    }


def _verify_json(reports: list[ChainReport]) -> dict[str, Any]:
    return {
        "intact": all(r.intact for r in reports),
        "chains": [
            {
                "node": r.node,
                "records": r.records,
                "intact": r.intact,
                "head": {"seq": r.head.last_seq, "hash": r.head.last_hash} if r.head else None,
                "anchor": f"{r.head.node}:{r.head.last_seq}:{r.head.last_hash}" if r.head else None,
                "problems": [_problem_json(p) for p in r.problems],
            }
            for r in reports
        ],
    }


# -- export ---------------------------------------------------------------------------------------


def parse_since(text: str, field: str, now: dt.datetime) -> dt.datetime:
    """A point in time: an ISO 8601 date (midnight UTC) or date and time (UTC unless it names an
    offset), or a duration back from `now` (30m, 24h, 7d, 2w); a one-line refusal naming `field`."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return now - dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise refuse(field, f"{text!r} is neither an ISO 8601 date or time nor a duration such as 24h or 7d") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    """stdout, or the file `out` created readable by its owner only (records name clients and causes)."""
    if out is None:
        yield sys.stdout
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise refuse("--out", f"cannot write {out}: {exc.strerror}") from None
    with open(fd, "w", encoding="utf-8", newline="\n") as stream:
        yield stream


@audit.command("export")
@config_options
@click.option("--since", "since_text", metavar="ISO-DATE|DURATION", help="From this time (2026-01-31, 24h, 7d).")
@click.option("--until", "until_text", metavar="ISO-DATE|DURATION", help="Up to (not including) this time.")
@click.option("--node", help="Only this node's records [default: all].")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "cef"]), default="jsonl", show_default=True)
@click.option("--out", type=FILE, help="Write to this file (created 0600) instead of stdout.")
def audit_export(
    data_dir: Path,
    config_file: Path | None,
    since_text: str | None,
    until_text: str | None,
    node: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    """Export audit records in the order they were written: JSON Lines (every field, the chain's
    included) or CEF (ArcSight Common Event Format, one line each)."""
    now = utcnow()
    since = parse_since(since_text, "--since", now) if since_text else None
    until = parse_since(until_text, "--until", now) if until_text else None
    if since is not None and until is not None and until <= since:
        raise refuse("--until", f"{until.isoformat()} is not after --since {since.isoformat()}")
    if node is not None:
        try:
            check_node_name(node)
        except ValueError as exc:
            raise refuse("--node", str(exc)) from None
    config = load_cli_config(data_dir, config_file)
    version = product_version()
    count = 0
    with database_storage(config) as storage, _output(out) as stream:
        for record in storage.audit.records(since=since, until=until, node=node):
            stream.write(jsonl_line(record) if fmt == "jsonl" else cef_line(record, version))
            count += 1
    if out is not None:
        click.echo(f"exported {count} audit records to {out}", err=True)
