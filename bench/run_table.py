"""bench/run's table: the medians over the runs, and the markdown (see bench/run_bench.py).

Pure functions of bench/run's result (a dict, as written by `--json`); nothing here runs anything.
`result["runs"]` holds every run's raw rows ({"hello": rows, "scep": rows, "est": rows, "load": {...}},
a part that failed in a run is None there); each (part, server or mode, concurrency) becomes a
`Cell` over the runs in which its part succeeded, shown as median (range) when there are several.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterator
from typing import Any

HELLO_MODES = ("http-keep-alive", "https-keep-alive", "https-new-conn")
HELLO_MODE_TEXT = {
    "http-keep-alive": "HTTP keep-alive (SCEP's load generator)",
    "https-keep-alive": "HTTPS keep-alive (EST's load generator)",
    "https-new-conn": "HTTPS, new TLS connection per request",
}
EST_MODE_TEXT = {"keep-alive": "HTTPS keep-alive", "new-conn": "new TLS connection per request"}
EST_CEILING = {"keep-alive": "https-keep-alive", "new-conn": "https-new-conn"}
FULL_MIGRATION = {"certificates": 100_000, "devices": 1_000_000}  # issue 6's sizes
PARTS = ("hello", "scep", "est")
PART_KEY = {"hello": "mode", "scep": "server", "est": "mode", "baseline_scep": "server", "baseline_est": "mode"}
PART_RATE = {
    "hello": "requests_per_s",
    "scep": "enrollments_per_s",
    "est": "enrollments_per_s",
    "baseline_scep": "enrollments_per_s",
    "baseline_est": "enrollments_per_s",
}
BASELINE_PARTS = {"scep": "baseline_scep", "est": "baseline_est"}  # this revision's part -> the baseline's
PART_TITLE = {"hello": "hello world", "scep": "SCEP", "est": "EST"}
REPEATED_PHASES = (*PARTS, *BASELINE_PARTS.values())  # the CPU-load phases measured once per run
DASH = "\u2013"  # en dash, between the ends of a range


# -- the medians ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One (server or mode, concurrency) of a part: its figures per run, in run order."""

    name: str  # the server (SCEP) or the mode (EST, hello world)
    concurrency: int
    runs: list[int] = dataclasses.field(default_factory=list)  # run numbers (from 1) with a row here
    requests: list[int] = dataclasses.field(default_factory=list)
    rates: list[float] = dataclasses.field(default_factory=list)  # verified enrollments (echoes) per second
    p50_ms: list[float] = dataclasses.field(default_factory=list)
    p99_ms: list[float] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)
    reasons: list[tuple[int, list[Any]]] = dataclasses.field(default_factory=list)  # (run, [[reason, n], ...])

    def add(self, run: int, row: dict[str, Any], rate_key: str) -> None:
        self.runs.append(run)
        self.requests.append(int(row["requests"]))
        self.rates.append(float(row[rate_key]))
        self.p50_ms.append(float(row["p50_ms"]))
        self.p99_ms.append(float(row["p99_ms"]))
        self.failed.append(int(row["failed"]))
        if row.get("failure_reasons"):
            self.reasons.append((run, list(row["failure_reasons"])))

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def cells(runs: list[dict[str, Any]], part: str) -> dict[tuple[str, int], Cell]:
    """The part's cells over the runs, in the order of the rows (a run where the part failed adds nothing)."""
    found: dict[tuple[str, int], Cell] = {}
    for number, run in enumerate(runs, 1):
        for row in run.get(part) or []:
            key = (str(row[PART_KEY[part]]), int(row["concurrency"]))
            found.setdefault(key, Cell(*key)).add(number, row, PART_RATE[part])
    return found


def versus_micromdm(runs: list[dict[str, Any]], level: int) -> list[float]:
    """gateway / micromdm enrollments per second at `level`, one ratio per run that measured both."""
    ratios = []
    for run in runs:
        rows = {(row["server"], row["concurrency"]): row for row in run.get("scep") or []}
        gateway, micromdm = rows.get(("gateway", level)), rows.get(("micromdm", level))
        if gateway and micromdm and micromdm["enrollments_per_s"]:
            ratios.append(gateway["enrollments_per_s"] / micromdm["enrollments_per_s"])
    return ratios


def ceiling_key(part: str, cell: Cell) -> tuple[str, int]:
    """The hello-world cell a part's cell is compared with: same load generator, transport, concurrency."""
    if part == "scep":
        return ("http-keep-alive", cell.concurrency)
    if part == "est":
        return (EST_CEILING.get(cell.name, ""), cell.concurrency)
    return (cell.name, cell.concurrency)


def stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_run": values}


def medians(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The JSON form of every cell: medians, ranges and per-run figures (the raw rows stay in `runs`)."""
    hello = cells(runs, "hello")
    out: dict[str, list[dict[str, Any]]] = {}
    for part in PARTS:
        out[part] = []
        for cell in cells(runs, part).values():
            ceiling = hello.get(ceiling_key(part, cell))
            ratios = versus_micromdm(runs, cell.concurrency) if part == "scep" and cell.name == "gateway" else []
            out[part].append(
                {
                    PART_KEY[part]: cell.name,
                    "concurrency": cell.concurrency,
                    "runs": cell.runs,
                    "requests": cell.requests,
                    PART_RATE[part]: stats(cell.rates),
                    "p50_ms": statistics.median(cell.p50_ms),
                    "p99_ms": statistics.median(cell.p99_ms),
                    "failed": cell.failed,
                    "vs_micromdm": stats(ratios),
                    "of_ceiling": cell.rate / ceiling.rate if ceiling and ceiling.rate else None,
                }
            )
    return out


def highest_load(loads: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per phase, the figures of the run in which other processes used the most CPU (with its number)."""
    highest: dict[str, dict[str, float]] = {}
    for number, load in enumerate(loads, 1):
        for phase, figures in load.items():
            if phase not in highest or figures["other_cpus"] > highest[phase]["other_cpus"]:
                highest[phase] = {**figures, "run": number}
    return highest


def partial_notes(runs: list[dict[str, Any]]) -> list[str]:
    """One note per part that failed in some runs but not all: its figures are medians over the rest."""
    notes = []
    for part in PARTS:
        good = [number for number, run in enumerate(runs, 1) if run.get(part) is not None]
        if good and len(good) < len(runs):
            listed = ", ".join(str(number) for number in good)
            notes.append(
                f"{PART_TITLE[part]}: figures over the {len(good)} of {len(runs)} runs that succeeded (run {listed})"
            )
    return notes


# -- the table ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    part: str
    variant: str
    conc: str = ""
    requests: str = ""
    value: str = ""
    p50: str = ""
    p99: str = ""
    failed: str = ""
    versus: str = ""
    ceiling: str = ""


COLUMNS = [
    ("part", "part", "<"),
    ("variant", "variant", "<"),
    ("conc", "conc", ">"),
    ("requests", "requests", ">"),
    ("value", "result", ">"),
    ("p50", "p50 ms", ">"),
    ("p99", "p99 ms", ">"),
    ("failed", "failed", ">"),
    ("versus", "vs micromdm", ">"),
    ("ceiling", "% of ceiling", ">"),
]


def render(rows: list[Row]) -> str:
    cells = [[getattr(row, name) for name, _title, _align in COLUMNS] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (_n, title, _a) in enumerate(COLUMNS)]

    def line(values: list[str]) -> str:
        padded = [
            value.ljust(width) if align == "<" else value.rjust(width)
            for value, width, (_n, _t, align) in zip(values, widths, COLUMNS, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":" if a == ">" else "-" * (w + 2)) for w, (_n, _t, a) in zip(widths, COLUMNS, strict=True)
        )
        + "|"
    )
    return "\n".join([line([title for _n, title, _a in COLUMNS]), rule, *(line(c) for c in cells)])


def _per_second(value: float, median: float) -> str:
    """One decimal below 1,000/s, none above (the median decides, so a range reads `1,000/s (800-1,200)`)."""
    return f"{value:,.1f}" if median < 1000 else f"{value:,.0f}"


def _ratio(value: float, _median: float) -> str:
    return f"{value:.2f}"


def spread(values: list[float], show: Callable[[float, float], str], unit: str = "") -> str:
    """The median, and with several values their range (min, en dash, max): `319.1/s (293.6-326.9)`."""
    if not values:
        return ""
    median = statistics.median(values)
    if len(values) < 2:
        return show(median, median) + unit
    return f"{show(median, median)}{unit} ({show(min(values), median)}{DASH}{show(max(values), median)})"


def _counts(values: list[int]) -> str:
    return ", ".join(str(value) for value in values)


def _requests(values: list[int]) -> str:
    """The requests per level: one figure when every run sent as many (as they do unless time-bound)."""
    return str(values[0]) if len(set(values)) == 1 else _counts(values)


def _share(cell: Cell, ceiling: Cell | None) -> str:
    if not ceiling or not ceiling.rate:
        return ""
    return f"{100 * cell.rate / ceiling.rate:.1f} %"


def _row(part: str, variant: str, cell: Cell, digits: int, versus: str, ceiling: str) -> Row:
    return Row(
        part,
        variant,
        str(cell.concurrency),
        _requests(cell.requests),
        spread(cell.rates, _per_second, "/s"),
        f"{statistics.median(cell.p50_ms):.{digits}f}",
        f"{statistics.median(cell.p99_ms):.{digits}f}",
        _counts(cell.failed),
        versus,
        ceiling,
    )


SCEP_SERVER_TEXT = {
    "gateway": "gateway, HTTP keep-alive",
    "gateway-softhsm": "gateway, CA/RA/TLS keys in SoftHSM2 (PKCS#11), HTTP keep-alive",
    "micromdm": "micromdm scepserver, HTTP keep-alive",
}


def scep_rows(runs: list[dict[str, Any]], hello: dict[tuple[str, int], Cell]) -> Iterator[Row]:
    gateway_first = sorted(cells(runs, "scep").items(), key=lambda item: (item[0][0] != "gateway", item[0]))
    for (server, level), cell in gateway_first:
        versus = spread(versus_micromdm(runs, level), _ratio, "x") if server == "gateway" else ""
        variant = SCEP_SERVER_TEXT.get(server, f"{server}, HTTP keep-alive")
        share = _share(cell, hello.get(ceiling_key("scep", cell)))
        yield _row("SCEP PKIOperation (PKCSReq)", variant, cell, 1, versus, share)


def est_rows(runs: list[dict[str, Any]], hello: dict[tuple[str, int], Cell]) -> Iterator[Row]:
    for (mode, _level), cell in sorted(cells(runs, "est").items()):
        share = _share(cell, hello.get(ceiling_key("est", cell)))
        yield _row("EST simpleenroll", f"gateway, {EST_MODE_TEXT.get(mode, mode)}", cell, 1, "", share)


def hello_rows(hello: dict[tuple[str, int], Cell]) -> Iterator[Row]:
    for mode in HELLO_MODES:
        for (row_mode, _level), cell in sorted(hello.items()):
            if row_mode == mode:
                yield _row("ceiling: hello world", HELLO_MODE_TEXT[mode], cell, 2, "", "100 %")


def request_rows(runs: list[dict[str, Any]]) -> list[Row]:
    """SCEP, EST and hello-world rows: medians (range) over the runs in which each part succeeded."""
    hello = cells(runs, "hello")
    return [*scep_rows(runs, hello), *est_rows(runs, hello), *hello_rows(hello)]


def rss_rows(peaks: list[dict[str, Any]], runs: int) -> list[Row]:
    """The largest peak per listener, over every run (`peaks`: bench/run's result["rss"])."""
    wanted = [
        ("scep", "gateway", "http", "worker", "gateway HTTP listener (SCEP part)"),
        ("est", "gateway", "https", "worker", "gateway HTTPS listener (EST part)"),
        ("hello", "hello", "http", "worker", "hello world HTTP listener (same imports as serve)"),
        ("hello", "hello", "https", "worker", "hello world HTTPS listener (same imports as serve)"),
        ("scep", "micromdm", "", "process", "micromdm scepserver (one process)"),
    ]
    rows = []
    for phase, server, listener, role, text in wanted:
        key = (phase, server, listener, role)
        found = [p for p in peaks if (p["phase"], p["server"], p["listener"], p["role"]) == key]
        if not found:
            continue
        top = max(found, key=lambda p: int(p["hwm_kib"]))
        count = f"max of {len(found)} workers" if role == "worker" else ""
        count += f" in {runs} runs" if count and runs > 1 else ""
        variant = f"{text}, {count}" if count else text
        rows.append(Row("peak RSS per worker", variant, value=f"{top['hwm_kib'] / 1024:.1f} MiB"))
    return rows


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), item)
    else:
        yield prefix, value


def _records(figures: Any) -> list[Any]:
    """A list as it is; {"rows"|"results": [...]} its list; {name: {...}, ...} one record per name."""
    if isinstance(figures, list):
        return figures
    if isinstance(figures, dict):
        for key in ("rows", "results"):
            if isinstance(figures.get(key), list):
                return list(figures[key])
        if figures and all(isinstance(value, dict) for value in figures.values()):
            return [{"name": str(name), **value} for name, value in figures.items()]
    return [figures]


def _number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def generic_rows(figures: Any) -> list[Row]:
    """Figures in a shape this script does not know: one row per number, named by its labels and key."""
    rows = []
    for record in _records(figures):
        if not isinstance(record, dict):
            rows.append(Row("migration", "result", value=str(record)))
            continue
        labels = ", ".join(str(v) for v in record.values() if isinstance(v, str))
        for key, value in _flat("", record):
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append(Row("migration", f"{labels}: {key}" if labels else key, value=_number(value)))
    return rows


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def migration_rows(migration: dict[str, Any]) -> list[Row]:
    """bench/migration's figures: per backend the import (first run, second run) and the report build."""
    figures, sizes = migration["figures"], migration["sizes"]
    if figures is None:
        return [Row("migration", migration["note"])]
    if not isinstance(figures, dict) or not any(str(k).startswith(("import_", "report_")) for k in figures):
        return generic_rows(figures)
    rows = []
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        imported = figures.get(f"import_{backend}")
        report = figures.get(f"report_{backend}")
        if isinstance(imported, dict) and (first := _seconds(imported.get("first_run_s"))) is not None:
            count = int(imported.get("certificates") or sizes.get("certificates", 0))
            rate = f" ({count / first:,.0f}/s)" if first and count else ""
            rows.append(
                Row(
                    "migration",
                    f"{name}: import of {count:,} certificates (micromdm depot)",
                    value=f"{first:.1f} s{rate}",
                )
            )
            if (second := _seconds(imported.get("second_run_s"))) is not None:
                rows.append(Row("migration", f"{name}: the same import again (adds nothing)", value=f"{second:.1f} s"))
        if isinstance(report, dict):
            over = f" over {sizes['devices']:,} devices" if sizes.get("devices") else ""
            builds = sorted(
                v for k, v in report.items() if str(k).startswith("report (1,000 per list)") and _seconds(v) is not None
            )
            if builds:
                median = builds[len(builds) // 2]
                text = f"{name}: migration report{over} (1,000 per list, median of {len(builds)} builds)"
                rows.append(Row("migration", text, value=f"{median:.2f} s"))
            if (full := _seconds(report.get("report (every device listed)"))) is not None:
                rows.append(
                    Row("migration", f"{name}: migration report{over}, every device listed", value=f"{full:.2f} s")
                )
        if not isinstance(imported, dict) and not isinstance(report, dict):
            rows.append(Row("migration", f"{name}: not measured (see bench/migration's output)"))
    return rows


def load_rows(load: dict[str, dict[str, float]], nproc: int, runs: int) -> list[Row]:
    names = {
        "idle before the start": "CPUs busy in the second before the start",
        "hello": "CPUs used by other processes during the hello-world part",
        "scep": "CPUs used by other processes during the SCEP part",
        "est": "CPUs used by other processes during the EST part",
        "baseline_scep": "CPUs used by other processes during the baseline's SCEP part",
        "baseline_est": "CPUs used by other processes during the baseline's EST part",
        "migration": "CPUs used by other processes during the migration part (PostgreSQL counts as other)",
    }
    rows = []
    for phase, figures in load.items():
        text = names.get(phase, phase)
        text += f" (highest of {runs} runs)" if runs > 1 and phase in REPEATED_PHASES else ""
        rows.append(Row("machine", text, value=f"{figures['other_cpus']:.2f} of {nproc}"))
    return rows


def _migration_sizes(migration: dict[str, Any] | None) -> str:
    sizes = (migration or {}).get("sizes") or {}
    if not sizes:
        return ""
    asked = ", ".join(f"{value:,} {name}" for name, value in sizes.items())
    reduced = " (reduced by --quick; issue 6's sizes are 100,000 and 1,000,000)" if sizes != FULL_MIGRATION else ""
    return f" bench/migration: {asked}{reduced}."


def _runs_text(runs: int) -> str:
    """What the figures are when there are several runs ('' for one: the table of a single run)."""
    if runs < 2:
        return ""
    return (
        f" Runs: {runs} (hello world, SCEP, EST, then again; bench/migration once). result, p50 and p99 are "
        f"medians over the runs, result with its range (min{DASH}max) in parentheses; failed lists each run's count; "
        "vs micromdm is the median (range) of the per-run ratios gateway/micromdm; % of ceiling is against the "
        "median hello-world figure; peak RSS is the highest of all runs, CPUs used by other processes the "
        "highest run of each part."
    )


def failure_notes(runs: list[dict[str, Any]]) -> list[str]:
    """One line per SCEP or EST cell and run with failures, with the most common reasons."""
    notes = []
    for part in ("scep", "est"):
        for cell in cells(runs, part).values():
            for number, reasons in cell.reasons:
                text = "; ".join(f"{n} x {reason.strip()}" for reason, n in reasons)
                where = f" in run {number}" if len(runs) > 1 else ""
                notes.append(f"- {part.upper()} {cell.name} c={cell.concurrency} failures{where}: {text}")
    return notes


def versus_baseline(runs: list[dict[str, Any]], part: str, name: str, level: int) -> list[float]:
    """This revision / the baseline's enrollments per second of one cell, one ratio per run that measured both."""
    ratios = []
    for run in runs:
        now = {(row[PART_KEY[part]], row["concurrency"]): row for row in run.get(part) or []}
        before = {(row[PART_KEY[part]], row["concurrency"]): row for row in run.get(BASELINE_PARTS[part]) or []}
        current, baseline = now.get((name, level)), before.get((name, level))
        if current and baseline and baseline["enrollments_per_s"]:
            ratios.append(current["enrollments_per_s"] / baseline["enrollments_per_s"])
    return ratios


def baseline_markdown(result: dict[str, Any]) -> str:
    """The before/after table of `bench/run --baseline REV` ('' without a baseline): the gateway at REV and
    at this revision, measured in the same run(s), one after the other."""
    baseline = result["settings"].get("baseline")
    runs = result["runs"]
    if not baseline:
        return ""
    header = [
        "part",
        "variant",
        "conc",
        f"before ({baseline}) /s",
        "after /s",
        "after/before",
        "p99 ms before",
        "after",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
    for part, title in (("scep", "SCEP PKCSReq"), ("est", "EST simpleenroll")):
        after = cells(runs, part)
        before = cells(runs, BASELINE_PARTS[part])
        for key, cell in sorted(after.items()):
            old = before.get(key)
            if old is None or key[0] == "micromdm":
                continue
            ratio = spread(versus_baseline(runs, part, *key), _ratio, "x")
            variant = EST_MODE_TEXT.get(cell.name, "HTTP keep-alive") if part == "est" else "HTTP keep-alive"
            lines.append(
                f"| {title} | {variant} | {cell.concurrency} | {spread(old.rates, _per_second, '')} | "
                f"{spread(cell.rates, _per_second, '')} | {ratio} | {statistics.median(old.p99_ms):.1f} | "
                f"{statistics.median(cell.p99_ms):.1f} |"
            )
    return "\n".join(
        [
            f"#### Before and after: gateway at {baseline} and at this revision, same run",
            "",
            "Both served with their own `gateway serve` defaults, SQLite, RSA-2048 CA, the same load generators "
            "and request counts, one after the other in every run (this revision first).",
            "",
            *lines,
        ]
    )


def markdown(result: dict[str, Any]) -> str:
    """The heading, the machine, the settings and the table (bench/run's result, rss and load filled in)."""
    m = result["machine"]
    s = result["settings"]
    loads = result["load"]
    runs = len(result["runs"])
    heaviest = max((f["other_cpus"] for f in loads.values()), default=0.0)
    rows = request_rows(result["runs"]) + rss_rows(result["rss"], runs) + migration_rows(result["migration"])
    rows += load_rows(loads, m["nproc"], runs)
    lines = [
        f"### bench/run, {result['date']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Machine: {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']}, {m['openssl_ssl']} (ssl: TLS), {m['openssl_cryptography']} "
        f"(cryptography {m['cryptography']}: signatures, envelopes), gunicorn {m['gunicorn']}, Flask {m['flask']}; "
        f"revision {m['revision']}. Load average at the start {' / '.join(m['loadavg_start'])}; other processes "
        f"used up to {heaviest:.2f} of {m['nproc']} CPUs during a part (rows `machine`).",
        "",
        f"Servers: gateway serve and the hello world with the same gunicorn settings ({s['workers']} "
        f"{s.get('worker_kind', 'gthread')} workers per listener, keepalive 15 s, one SSLContext built before the "
        "fork), SQLite, "
        f"RSA-2048 CA. Requests per level: SCEP {s['requests']['scep']} per server, EST {s['requests']['est']} per "
        f"mode, hello world {s['requests']['hello']} per mode; all built before the timed section. result = "
        "verified enrollments (hello world: correct echoes) per second of wall time; % of ceiling = that figure "
        "over the hello world's at the same concurrency with the same load generator and transport."
        + _migration_sizes(result["migration"])
        + _runs_text(runs),
        "",
        render(rows),
    ]
    notes = failure_notes(result["runs"])
    if notes:
        lines += ["", *notes]
    before_after = baseline_markdown(result)
    if before_after:
        lines += ["", before_after]
    return "\n".join(lines)
