"""Log lines a client cannot forge: the text and JSON formatters, their handler, and gunicorn's lines.

Every record the gateway writes passes through the handler `configure_logging` installs; what a
client sends (subjects, paths, User-Agent, user names) must come out as one line per record, with
control characters as visible escapes (text) or JSON escapes (json).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig

from gateway.logs import (
    CONTINUATION,
    GatewayLogHandler,
    GunicornLogger,
    JsonFormatter,
    JsonLineStream,
    RequestIdFilter,
    TextFormatter,
    announcer,
    bind_request_id,
    capture_process_output,
    configure_logging,
    escape,
    formatter_for,
    jsonable,
)

# What a line may hold once escaped: printable ASCII, and printable non-ASCII text that is no control,
# separator or bidirectional mark.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param("dev\nINJECTED", "dev\\nINJECTED", id="lf"),
        pytest.param("dev\r\nINJECTED", "dev\\r\\nINJECTED", id="crlf"),
        pytest.param("a\tb", "a\\tb", id="tab"),
        pytest.param("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", id="ansi-esc"),
        pytest.param("nul\x00", "nul\\x00", id="nul"),
        pytest.param("bell\x07", "bell\\x07", id="c0-bell"),
        pytest.param("del\x7f", "del\\x7f", id="del"),
        pytest.param("nel\x85INJECTED", "nel\\x85INJECTED", id="c1-nel"),
        pytest.param("\x9b31mcsi", "\\x9b31mcsi", id="c1-csi"),
        pytest.param("ls\u2028INJECTED", "ls\\u2028INJECTED", id="line-separator"),
        pytest.param("ps\u2029INJECTED", "ps\\u2029INJECTED", id="paragraph-separator"),
        pytest.param("evil\u202etxt.exe", "evil\\u202etxt.exe", id="bidi-override"),
        pytest.param("iso\u2066x\u2069", "iso\\u2066x\\u2069", id="bidi-isolate"),
        pytest.param("lone\ud800", "lone\\ud800", id="lone-surrogate"),
        pytest.param("Grüße, 東京 \\n", "Grüße, 東京 \\n", id="printable-unchanged"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(shown) == shown  # escaping is idempotent: an escaped line holds nothing to escape


def _record(msg: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, msg, args or None, exc_info)
    record.__dict__.update(extra)
    return record


INJECTED = "dev\nINJECTED record\r\x1b[2J\x1b[31m\x85\u2028\u2029\t\x00\x7f\x9b"


def test_text_record_is_one_line_with_visible_escapes() -> None:
    line = TextFormatter().format(_record("issued to %s (agent %r)", f"CN={INJECTED}", "ua\x1b]0;title\x07"))
    assert "\n" not in line
    assert len(line.splitlines()) == 1  # str.splitlines also breaks at \x85, \x1c-\x1e, \u2028, \u2029
    assert _FORBIDDEN.search(line) is None
    assert _RECORD_START.match(line), line
    assert "CN=dev\\nINJECTED record\\r\\x1b[2J\\x1b[31m\\x85\\u2028\\u2029\\t\\x00\\x7f\\x9b" in line
    assert " WARNING gateway.test: issued to " in line


def test_text_record_escapes_a_message_without_arguments() -> None:
    line = TextFormatter().format(_record(f"raw text {INJECTED}"))
    assert len(line.splitlines()) == 1 and _FORBIDDEN.search(line) is None


def test_text_traceback_stays_readable_on_continuation_lines() -> None:
    forged = "2030-01-01 00:00:00,000 [1] INFO gateway.access: forged record"
    try:
        raise ValueError(f"bad subject CN=x\n{forged}\x1b[31m")
    except ValueError as caught:
        record = _record("unexpected error in %s", f"/scep\n{forged}", exc=caught)
    lines = TextFormatter().format(record).split("\n")
    assert _RECORD_START.match(lines[0]) and "/scep\\n2030-01-01" in lines[0]
    assert lines[1] == CONTINUATION + "Traceback (most recent call last):"
    assert all(line.startswith(CONTINUATION) for line in lines[1:]), lines
    assert not any(_RECORD_START.match(line) for line in lines[1:])
    assert lines[-2:] == [CONTINUATION + "ValueError: bad subject CN=x", CONTINUATION + forged + "\\x1b[31m"]
    assert all(_FORBIDDEN.search(line) is None for line in lines)


def test_text_stack_info_on_continuation_lines() -> None:
    record = _record("where am I")
    record.stack_info = "Stack (most recent call last):\n  File 'x', line 1\nforged\u2028line"
    lines = TextFormatter().format(record).split("\n")
    assert lines[1:] == [
        CONTINUATION + "Stack (most recent call last):",
        CONTINUATION + "  File 'x', line 1",
        CONTINUATION + "forged\\u2028line",
    ]


class _Shouting:
    def __str__(self) -> str:
        return "object\nINJECTED\x1b[31m"


def _json_line(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line and len(line.splitlines()) == 1
    assert line.isascii() and line.isprintable(), line  # every control and separator is a JSON escape
    decoded: dict[str, Any] = json.loads(line)
    return decoded


def test_json_record_is_one_object_and_keeps_the_text() -> None:
    record = _record("issued to %s", f"CN={INJECTED}", user_agent=f"ua {INJECTED}", path="/est\n\x1b")
    decoded = _json_line(record)
    assert decoded["message"] == f"issued to CN={INJECTED}"  # JSON escapes; the reader gets the text back
    assert decoded["user_agent"] == f"ua {INJECTED}"
    assert decoded["path"] == "/est\n\x1b"
    assert decoded["level"] == "warning" and decoded["logger"] == "gateway.test"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"\x1b[31m\n", "b'\\x1b[31m\\n'", id="bytes"),
        pytest.param(_Shouting(), "object\nINJECTED\x1b[31m", id="object-str"),
        pytest.param({("a", 1): "x\n", 2: None}, {"('a', 1)": "x\n", "2": None}, id="dict-non-str-keys"),
        pytest.param({"s": {"\u2028"}}, {"s": ["\u2028"]}, id="set"),
        pytest.param(float("nan"), "nan", id="nan"),
        pytest.param(float("-inf"), "-inf", id="infinity"),
        pytest.param((1, 2.5, True, None), [1, 2.5, True, None], id="tuple"),
    ],
)
def test_json_extra_values_of_any_type(value: Any, expected: Any) -> None:
    assert jsonable(value) == expected
    assert _json_line(_record("x", detail=value))["detail"] == expected


def test_json_extra_that_refers_to_itself() -> None:
    loop: list[Any] = ["a\nb"]
    loop.append(loop)
    decoded = _json_line(_record("loop", detail=loop))
    assert decoded["detail"][0] == "a\nb"


def test_json_exception_and_stack() -> None:
    try:
        raise RuntimeError("boom\nINJECTED")
    except RuntimeError as caught:
        record = _record("failed", exc=caught)
    record.stack_info = "Stack:\n  here"
    decoded = _json_line(record)
    assert decoded["exception"].endswith("RuntimeError: boom\nINJECTED")
    assert decoded["stack"] == "Stack:\n  here"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_record_that_cannot_be_formatted_is_one_line(log_format: str) -> None:
    stream = io.StringIO()
    handler = GatewayLogHandler(stream)
    handler.setFormatter(formatter_for(log_format))
    # Two placeholders, one argument: logging's own handler would print a traceback and the raw msg.
    handler.handle(_record("user %s from %s\n\x1b[31mINJECTED", "alice"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, stream.getvalue()
    assert "Traceback" not in lines[0] and "--- Logging error ---" not in lines[0]
    assert "a log record could not be written (TypeError)" in (
        json.loads(lines[0])["message"] if log_format == "json" else lines[0]
    )
    assert _FORBIDDEN.search(lines[0]) is None


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger and logging's switches back as they were after a test changes them."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    gunicorn_error = logging.getLogger("gunicorn.error")
    saved_gunicorn = (list(gunicorn_error.handlers), gunicorn_error.propagate, gunicorn_error.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved[2:]
    gunicorn_error.handlers[:] = saved_gunicorn[0]
    gunicorn_error.propagate = saved_gunicorn[1]
    gunicorn_error.setLevel(saved_gunicorn[2])


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_installs_one_escaping_handler() -> None:
    configure_logging("text", "info")
    configure_logging("json", "debug")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_gateway", False)]
    assert len(ours) == 1
    assert isinstance(ours[0], GatewayLogHandler) and isinstance(ours[0].formatter, JsonFormatter)
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorn_lines_go_through_the_gateway_handler(log_format: str) -> None:
    configure_logging(log_format, "info")
    stream = io.StringIO()
    [ours] = [h for h in logging.getLogger().handlers if getattr(h, "_gateway", False)]
    assert isinstance(ours, GatewayLogHandler)
    ours.setStream(stream)
    cfg = GunicornConfig()
    cfg.set("errorlog", "-")
    cfg.set("loglevel", "info")
    cfg.set("logger_class", GunicornLogger)
    glog = cfg.logger_class(cfg)
    assert isinstance(glog, GunicornLogger)
    assert not [h for h in glog.error_log.handlers if getattr(h, "_gunicorn", False)]
    glog.error("Error handling request %s", "/scep\nINJECTED\x1b[31m")
    glog.setup(cfg)  # a reload (SIGHUP) runs setup again: still no handler of gunicorn's own
    glog.info("Booting worker with pid: %s", 42)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, stream.getvalue()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [r["logger"] for r in records] == ["gunicorn.error", "gunicorn.error"]
        assert records[0]["message"] == "Error handling request /scep\nINJECTED\x1b[31m"
    else:
        assert all(_RECORD_START.match(line) for line in lines)
        assert "ERROR gunicorn.error: Error handling request /scep\\nINJECTED\\x1b[31m" in lines[0]
    assert all(_FORBIDDEN.search(line) is None for line in lines)


# -- request ids, and what bypasses the logging module ----------------------------------------------


@pytest.mark.usefixtures("root_logging")
def test_records_logged_while_a_request_is_bound_carry_its_id() -> None:
    configure_logging("json", "info")
    stream = io.StringIO()
    [ours] = [h for h in logging.getLogger().handlers if getattr(h, "_gateway", False)]
    assert isinstance(ours, GatewayLogHandler)
    ours.setStream(stream)
    log = logging.getLogger("gateway.test")
    try:
        bind_request_id("abc123")
        log.warning("refused")
        log.warning("access", extra={"request_id": "given"})  # a record naming its own id keeps it
        bind_request_id(None)
        log.warning("between requests")
    finally:
        bind_request_id(None)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r.get("request_id") for r in records] == ["abc123", "given", None]


def test_a_bound_request_id_stays_in_its_own_thread() -> None:
    bind_request_id("main-thread")
    try:
        record = _record("x")
        RequestIdFilter().filter(record)
        assert record.request_id == "main-thread"  # type: ignore[attr-defined]
        seen: list[str | None] = []

        def other() -> None:
            elsewhere = _record("y")
            RequestIdFilter().filter(elsewhere)
            seen.append(getattr(elsewhere, "request_id", None))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen == [None]
    finally:
        bind_request_id(None)


def _traceback_text() -> str:
    try:
        raise ValueError("broken\nINJECTED line")
    except ValueError:
        return traceback.format_exc()


def test_stray_lines_become_json_records_and_a_traceback_one_record() -> None:
    underlying = io.StringIO()
    stream = JsonLineStream(underlying, "stderr", logging.ERROR)
    stream.write("\nError: cannot load the app\n")  # gunicorn's print after a boot failure
    stream.write("partial ")
    stream.write("line\n")
    for line in _traceback_text().splitlines(keepends=True):  # as traceback.print_exc writes it
        stream.write(line)
    stream.write("trailing without newline")
    stream.flush()
    lines = underlying.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["logger"], r["level"]) for r in records] == [("stderr", "error")] * 5
    assert [r["message"] for r in records] == [
        "Error: cannot load the app",
        "partial line",
        "ValueError: broken",
        "INJECTED line",  # an exception message's second line: a record of its own, never raw text
        "trailing without newline",
    ]
    assert records[2]["exception"].startswith("Traceback (most recent call last):\n  File ")
    assert "exception" not in records[0]


def test_stray_stream_delegates_to_the_stream_beneath(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as underlying:
        stream = JsonLineStream(underlying, "stdout", logging.INFO)
        assert stream.fileno() == underlying.fileno() and not stream.isatty() and stream.writable()
        print("hello", file=stream)  # what a library's print does
    [record] = [json.loads(line) for line in (tmp_path / "out").read_text().splitlines()]
    assert (record["logger"], record["level"], record["message"]) == ("stdout", "info", "hello")


@pytest.fixture
def process_hooks(root_logging: None) -> Iterator[None]:
    """Put back what capture_process_output changes: the streams, the except hooks, warnings capture."""
    saved = (sys.stdout, sys.stderr, sys.excepthook, threading.excepthook)
    yield
    sys.stdout, sys.stderr, sys.excepthook, threading.excepthook = saved
    logging.captureWarnings(False)


@pytest.mark.usefixtures("process_hooks")
def test_capture_routes_warnings_uncaught_exceptions_and_prints_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    capture_process_output("json")
    capture_process_output("json")  # idempotent: no stream wrapped twice
    assert isinstance(sys.stderr, JsonLineStream) and not isinstance(sys.stderr.stream, JsonLineStream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pytest's filterwarnings=error would raise it
        warnings.warn_explicit("deprecated thing", UserWarning, "lib.py", 1)
    thread = threading.Thread(target=lambda: 1 / 0, name="crl-timer")
    thread.start()
    thread.join()
    try:
        raise KeyError("lost")
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    print("from a library")
    sys.stderr.write("gunicorn: raw line\n")
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in err.splitlines()]
    by_logger = {r["logger"]: r for r in records}
    assert "deprecated thing" in by_logger["py.warnings"]["message"]
    assert by_logger["gateway.uncaught"]["level"] == "critical"
    thread_record = next(r for r in records if r["message"] == "uncaught exception in thread crl-timer")
    assert "ZeroDivisionError" in thread_record["exception"]
    assert by_logger["stderr"]["message"] == "gunicorn: raw line"
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["from a library"]


@pytest.mark.usefixtures("process_hooks")
def test_capture_in_text_mode_leaves_the_streams_alone(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", "info")
    capture_process_output("text")
    assert not isinstance(sys.stderr, JsonLineStream) and not isinstance(sys.stdout, JsonLineStream)
    try:
        raise KeyError("lost")
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert _RECORD_START.match(err) and " CRITICAL gateway.uncaught: uncaught exception" in err
    assert all(line.startswith(CONTINUATION) for line in err.splitlines()[1:])


def test_announcer_writes_the_banner_as_json_records_with_urls(capsys: pytest.CaptureFixture[str]) -> None:
    announcer("json")("SCEP   http://127.0.0.1:8080/scep  and  https://127.0.0.1:8443/scep")
    announcer("text")("EST    https://127.0.0.1:8443/.well-known/est")
    json_line, text_line = capsys.readouterr().out.splitlines()
    record = json.loads(json_line)
    assert (record["logger"], record["message"]) == (
        "gateway.serve",
        "SCEP http://127.0.0.1:8080/scep and https://127.0.0.1:8443/scep",
    )
    assert record["urls"] == ["http://127.0.0.1:8080/scep", "https://127.0.0.1:8443/scep"]
    assert text_line == "EST    https://127.0.0.1:8443/.well-known/est"
