"""The regression corpus: every input that ever crashed the gateway, in tests/vectors/fuzz/.

Each `NAME.json` holds the request (`case`, as FuzzCase.to_json writes it), what it was (`what`),
the crash it caused (`signature`: the last project frame and the exception type) and whether that
is `fixed` or still `open`, with `owner` naming the module whose fix it waits for. README.md there
has a line per file. tests/test_fuzz_corpus.py replays every entry; an open one is a strict xfail,
so the day its fix lands the test says so and the entry is turned to `fixed`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tests.fuzzing.gateway_env import VECTORS, FuzzCase

CORPUS = VECTORS / "fuzz"


@dataclasses.dataclass(frozen=True)
class Crasher:
    """One corpus entry."""

    name: str
    case: FuzzCase
    what: str
    signature: str
    status: str  # "fixed" | "open"
    owner: str  # the module the fix belongs to

    @property
    def open(self) -> bool:
        """Whether the fix is still owed (the replay is a strict xfail)."""
        return self.status == "open"


def load_corpus(directory: Path = CORPUS) -> list[Crasher]:
    """Every entry of the corpus, by file name."""
    entries = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        entries.append(
            Crasher(
                name=path.stem,
                case=FuzzCase.from_json(data["case"]),
                what=data["what"],
                signature=data["signature"],
                status=data["status"],
                owner=data["owner"],
            )
        )
    return entries


def write_entry(crasher: Crasher, directory: Path = CORPUS) -> Path:
    """Save an entry as `<name>.json` (the README line is written by hand)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "what": crasher.what,
        "signature": crasher.signature,
        "status": crasher.status,
        "owner": crasher.owner,
        "case": crasher.case.to_json(),
    }
    path = directory / f"{crasher.name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def open_crash_sites(directory: Path = CORPUS) -> frozenset[tuple[str, str]]:
    """(file:function, exception type) of every crash still open: the fuzz tests report these as
    known (each is pinned by its strict-xfail corpus entry) and fail on any other."""
    return frozenset(crash_site(entry.signature) for entry in load_corpus(directory) if entry.open)


def crash_site(signature: str) -> tuple[str, str]:
    """('est/service.py:_run', 'InvalidVersion') from a signature such as
    'File "/work/main/est/service.py", line 167, in _run cryptography.x509.base.InvalidVersion'."""
    try:
        frame, exception = signature.rsplit(" ", 1)
        path = frame.split('"')[1]
        function = frame.rsplit(" in ", 1)[1]
    except IndexError:
        return signature, ""
    short = "/".join(Path(path).parts[-2:])
    return f"{short}:{function}", exception.rsplit(".", 1)[-1]
