"""Every input that ever crashed the gateway (tests/vectors/fuzz/) is replayed through the real app:
none may crash again. An entry whose fix is still owed by another module is a strict xfail."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzzing.corpus import CORPUS, Crasher, crash_site, load_corpus, open_crash_sites
from tests.fuzzing.gateway_env import FuzzGateway

ENTRIES = load_corpus()


def _param(entry: Crasher) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=f"open: the fix belongs to {entry.owner}")] if entry.open else []
    return pytest.param(entry, id=entry.name, marks=marks)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzGateway]:
    gateway = FuzzGateway(tmp_path_factory.mktemp("fuzz-corpus") / "data")
    yield gateway
    gateway.close()


@pytest.mark.parametrize("entry", [_param(entry) for entry in ENTRIES])
def test_a_crasher_no_longer_crashes(env: FuzzGateway, entry: Crasher) -> None:
    outcome = env.run(entry.case)
    assert outcome.crash is None, f"{entry.name} ({entry.what}) crashes again:\n{outcome.crash}"
    assert 200 <= outcome.status < 500 or outcome.status == 503


def test_the_corpus_is_documented() -> None:
    """One README line per file, each file readable, and every open entry names who owes the fix."""
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+)\.json` \| (fixed|open) \|", readme, re.MULTILINE))
    assert listed == {(entry.name, entry.status) for entry in ENTRIES}
    assert len(ENTRIES) >= 12
    for entry in ENTRIES:
        assert entry.status in ("fixed", "open")
        assert entry.owner and entry.what
        assert crash_site(entry.signature)[1], entry.signature  # a signature the fuzz tests can match
    assert all(json.loads(path.read_text()) for path in Path(CORPUS).glob("*.json"))


def test_open_crash_sites_come_from_the_open_entries() -> None:
    sites = open_crash_sites()
    assert sites == {crash_site(e.signature) for e in ENTRIES if e.open}
    assert not any(crash_site(e.signature) in sites for e in ENTRIES if not e.open)  # a fixed site cannot be known
