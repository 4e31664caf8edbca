"""The score of a mutmut run, per file and per function, and its surviving mutants.

Usage: python scripts/mutation_report.py MUTANTS_DIR [NAME_PATTERN ...]

Reads the `*.py.meta` files mutmut 3 writes beside each mutated file (JSON: `exit_code_by_key`) and
counts, for the mutants whose names match a pattern (all when none is given): killed by a test, caught
by the type checker (mypy strict, as CI runs it), survived, timed out, with no test, and the total.
The score is (killed + caught + timeout) / (total - no tests). Survivors are listed by name, for
`mutmut show NAME`.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py): what the run of one mutant ended with.
STATUS_BY_EXIT_CODE = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    37: "caught by mypy",
}
COLUMNS = ("killed", "caught by mypy", "timeout", "survived", "no tests", "other")


def status(exit_code: int | None) -> str:
    """The name of a mutant's outcome; 'not run' when it has none, 'other' for anything unexpected."""
    if exit_code is None:
        return "not run"
    return STATUS_BY_EXIT_CODE.get(exit_code, "other")


def function_of(mutant: str) -> str:
    """The function of a mutant: `est.auth.xǁEstAuthenticatorǁ_basic__mutmut_3` is `EstAuthenticator._basic`."""
    mangled = mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    if mangled.startswith("xǁ"):
        return ".".join(mangled[2:].split("ǁ"))
    return mangled.removeprefix("x_")


def outcomes(mutants_dir: Path, patterns: list[str]) -> dict[str, dict[str, str]]:
    """{source file: {mutant name: status}} of the mutants that match `patterns` and were run."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
        source = str(meta.relative_to(mutants_dir)).removesuffix(".meta")
        for name, code in codes.items():
            if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            state = status(code)
            if state != "not run":
                found.setdefault(source, {})[name] = state
    return found


def score(counts: Counter[str]) -> str:
    """Detected over testable, as a percentage."""
    testable = counts.total() - counts["no tests"]
    detected = counts["killed"] + counts["caught by mypy"] + counts["timeout"]
    return f"{100 * detected / testable:.1f}%" if testable else "-"


def table_row(label: str, counts: Counter[str]) -> str:
    cells = [str(counts[c]) for c in COLUMNS]
    return f"| {label} | {' | '.join(cells)} | {counts.total()} | {score(counts)} |"


def report(found: dict[str, dict[str, str]]) -> str:
    """Markdown tables per file and per function, then the survivors."""
    header = f"| | {' | '.join(COLUMNS)} | total | score |\n|---|{'---|' * (len(COLUMNS) + 2)}"
    lines = ["Per file:", "", header]
    overall: Counter[str] = Counter()
    for source, by_name in found.items():
        counts = Counter(by_name.values())
        overall += counts
        lines.append(table_row(f"`{source}`", counts))
    lines += [table_row("**all**", overall), "", "Per function:", "", header]
    for source, by_name in found.items():
        per_function: dict[str, Counter[str]] = {}
        for name, state in by_name.items():
            per_function.setdefault(function_of(name), Counter())[state] += 1
        for function, counts in per_function.items():
            lines.append(table_row(f"`{source}` {function}", counts))
    survivors = [
        name
        for by_name in found.values()
        for name, state in by_name.items()
        if state not in ("killed", "caught by mypy")
    ]
    lines += ["", f"Not detected ({len(survivors)}):", *(f"- {name}" for name in sorted(survivors))]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    mutants_dir = Path(argv[0])
    found = outcomes(mutants_dir, argv[1:])
    if not found:
        print(f"no mutant results under {mutants_dir}", file=sys.stderr)
        return 1
    print(report(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
