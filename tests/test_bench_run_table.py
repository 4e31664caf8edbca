"""bench/run's medians over several runs (bench/run_table.py: pure functions of the result)."""

from __future__ import annotations

from typing import Any

from bench.run_table import (
    Row,
    baseline_markdown,
    failure_notes,
    highest_load,
    medians,
    partial_notes,
    request_rows,
    rss_rows,
)


def _row(key: str, name: str, level: int, rate: float, p50: float = 5.0, failed: int = 0) -> dict[str, Any]:
    rate_key = "requests_per_s" if name.startswith("http") else "enrollments_per_s"
    return {
        key: name,
        "concurrency": level,
        "requests": 100,
        "failed": failed,
        rate_key: rate,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "failure_reasons": [["FAILURE badRequest", failed]] if failed else [],
    }


def _run(gateway: float, micromdm: float, hello: float, est: float | None = 300.0, failed: int = 0) -> dict[str, Any]:
    return {
        "hello": [_row("mode", "http-keep-alive", 4, hello), _row("mode", "https-keep-alive", 4, 2 * hello)],
        "scep": [
            _row("server", "gateway", 4, gateway, p50=gateway / 10),
            _row("server", "micromdm", 4, micromdm, failed=failed),
        ],
        "est": None if est is None else [_row("mode", "keep-alive", 4, est)],
        "load": {"hello": {"other_cpus": 0.1}, "scep": {"other_cpus": 0.2}, "est": {"other_cpus": 0.3}},
    }


def _by_variant(rows: list[Row]) -> dict[str, Row]:
    return {row.variant: row for row in rows}


def test_one_run_shows_plain_figures() -> None:
    rows = _by_variant(request_rows([_run(300.0, 200.0, 1000.0)]))
    gateway = rows["gateway, HTTP keep-alive"]
    assert (gateway.value, gateway.failed, gateway.versus, gateway.ceiling) == ("300.0/s", "0", "1.50x", "30.0 %")
    assert rows["HTTP keep-alive (SCEP's load generator)"].value == "1,000/s"


def test_three_runs_show_medians_ranges_and_per_run_ratios() -> None:
    runs = [_run(300.0, 200.0, 1000.0, failed=2), _run(330.0, 300.0, 1200.0), _run(280.0, 140.0, 800.0)]
    rows = _by_variant(request_rows(runs))
    gateway = rows["gateway, HTTP keep-alive"]
    assert gateway.value == "300.0/s (280.0\u2013330.0)"
    assert gateway.p50 == "30.0"  # median of 30, 33, 28
    # ratios per run: 1.5, 1.1, 2.0 (not the ratio of the medians, 300 / 200)
    assert gateway.versus == "1.50x (1.10\u20132.00)"
    assert gateway.ceiling == "30.0 %"  # 300 over the median hello world, 1,000
    assert rows["micromdm scepserver, HTTP keep-alive"].failed == "2, 0, 0"
    assert rows["HTTP keep-alive (SCEP's load generator)"].value == "1,000/s (800\u20131,200)"
    assert failure_notes(runs) == ["- SCEP micromdm c=4 failures in run 1: 2 x FAILURE badRequest"]
    cell = medians(runs)["scep"][0]
    assert cell["enrollments_per_s"]["median"] == 300.0
    assert cell["vs_micromdm"]["per_run"] == [1.5, 1.1, 2.0]


def test_a_part_that_failed_in_one_run_is_the_median_of_the_others() -> None:
    runs = [_run(300.0, 200.0, 1000.0, est=200.0), _run(300.0, 200.0, 1000.0, est=None), _run(300.0, 200.0, 1000.0)]
    est = _by_variant(request_rows(runs))["gateway, HTTPS keep-alive"]
    assert (est.value, est.failed) == ("250.0/s (200.0\u2013300.0)", "0, 0")
    assert est.ceiling == "12.5 %"  # 250 over 2,000
    assert partial_notes(runs) == ["EST: figures over the 2 of 3 runs that succeeded (run 1, 3)"]


def test_load_is_the_highest_run_per_phase_and_rss_the_highest_worker() -> None:
    loads = [{"scep": {"other_cpus": 0.2}}, {"scep": {"other_cpus": 0.7}}, {"scep": {"other_cpus": 0.1}}]
    assert highest_load(loads) == {"scep": {"other_cpus": 0.7, "run": 2}}
    peaks = [
        {"phase": "scep", "server": "gateway", "listener": "http", "role": "worker", "hwm_kib": kib}
        for kib in (70 * 1024, 80 * 1024, 75 * 1024, 72 * 1024)
    ]
    (row,) = rss_rows(peaks, 2)
    assert (row.variant, row.value) == ("gateway HTTP listener (SCEP part), max of 4 workers in 2 runs", "80.0 MiB")


def test_a_baseline_gets_a_before_after_table_with_per_run_ratios() -> None:
    runs = [_run(300.0, 200.0, 1000.0), _run(330.0, 300.0, 1200.0), _run(280.0, 140.0, 800.0)]
    for run, before in zip(runs, (150.0, 300.0, 200.0), strict=True):
        run["baseline_scep"] = [_row("server", "gateway", 4, before, p50=before / 10)]
        run["baseline_est"] = None  # the baseline's EST part failed in every run: no row
    result: dict[str, Any] = {"settings": {"baseline": "b97f298"}, "runs": runs}
    table = baseline_markdown(result)
    (line,) = [line for line in table.splitlines() if line.startswith("| SCEP")]
    # before 200 (150-300), after 300 (280-330); per-run ratios 2.0, 1.1, 1.4: median 1.4, not 300 / 200
    assert line == (
        "| SCEP PKCSReq | HTTP keep-alive | 4 | 200.0 (150.0\u2013300.0) | 300.0 (280.0\u2013330.0) | "
        "1.40x (1.10\u20132.00) | 40.0 | 60.0 |"
    )
    assert "EST" not in table.split("|---", 1)[1]
    assert baseline_markdown({"settings": {"baseline": None}, "runs": runs}) == ""
