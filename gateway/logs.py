"""Logging set-up: readable text for people, one JSON object a line for machines.

Log lines carry what clients send (subjects, SANs, User-Agent, paths, transaction ids, user names),
so the formatters, not the call sites, make every record one line that a client cannot forge:

- text: control characters become visible escapes (`\\n`, `\\x1b`, `\\u2028`); a traceback follows on
  continuation lines that all begin with `CONTINUATION`, so a line that begins otherwise is a record.
- json: `json.dumps` with ASCII output escapes every control and non-ASCII character, and `extra=`
  values of any type are reduced to JSON types first, so a record is always one JSON object.

gunicorn's own error log goes through the same handler (`GunicornLogger`). Every record logged while a
request is served carries its request id (`bind_request_id`, set by the WSGI middleware). In a process
of `gateway serve`, `capture_process_output` routes what bypasses the logging module (Python warnings,
uncaught exceptions, and in json mode any line printed to stdout or stderr) into records too, so that
in json mode every line either stream carries is one JSON object.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TextIO, cast

from gunicorn import glogging

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}

# What a text line must not carry raw: C0 controls (line breaks, tab, ESC that starts an ANSI sequence),
# DEL, C1 controls (NEL, 8-bit CSI), lone surrogates, the Unicode line and paragraph separators, and the
# bidirectional marks, embeddings, overrides and isolates that make a terminal show text in another order.
# Tab too: it cannot end a line, but it forges the field boundaries of tools that split records on it.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

CONTINUATION = "  | "
"""How each traceback line of a text record begins (a record's own line begins with its time)."""

_MAX_DEPTH = 8  # nesting of an `extra=` value kept in JSON; deeper parts are written as text


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every character that could break or disguise a log line written as a visible escape.

    Backslashes stay as they are: the text format is for people, and a client can no more end a line
    by typing `\\n` than by sending a newline. The JSON format is the unambiguous one.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as JSON types only (str, int, finite float, bool, None, list, dict with str keys)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item, depth + 1) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra=` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii (the default) writes control, non-ASCII and separator characters as \uXXXX.
        return json.dumps(payload, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """`time [pid] LEVEL logger: message` on one line; a traceback on continuation lines below it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(process)s] %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = escape(self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        trailers = [record.exc_text] if record.exc_text else []
        if record.stack_info:
            trailers.append(self.formatStack(record.stack_info))
        # A traceback stays readable, one frame a line, but each of its lines is escaped and indented:
        # an exception message holding a client's newline cannot start a line that looks like a record.
        parts = [line] + [CONTINUATION + escape(part) for trailer in trailers for part in trailer.split("\n")]
        return "\n".join(parts)


class GatewayLogHandler(logging.StreamHandler[TextIO]):
    """A stream handler whose own failures are reported as one formatted record, not a raw traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        # logging's default prints a traceback and the record's raw arguments (client text) to stderr.
        if not logging.raiseExceptions:
            return
        failure = sys.exc_info()[1]
        substitute = logging.LogRecord(
            record.name,
            logging.ERROR,
            record.pathname,
            record.lineno,
            "a log record could not be written (%s): %s",
            (type(failure).__name__, record.msg),
            None,
        )
        try:
            self.stream.write(self.format(substitute) + self.terminator)
            self.flush()
        except Exception:  # noqa: S110 - nothing is left to report a broken log stream to
            pass


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with its error log handed to the gateway's handler: same format, same escaping.

    gunicorn gives `gunicorn.error` a handler of its own with a plain format (and `propagate = False`);
    its lines (worker boots and exits, "Error handling request <uri>", invalid requests) would then
    bypass the escaping and break the one-JSON-object-a-line contract.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


_REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)


def bind_request_id(request_id: str | None) -> None:
    """Name `request_id` on every record logged from now on in this greenlet or thread (None: no request).

    The WSGI middleware binds each request's id as the request begins; the gevent worker starts each
    connection in a greenlet of its own (with a context of its own), and unbinds it once a request
    was served. After a failure it stays bound, so gunicorn's "Error handling request" names it."""
    _REQUEST_ID.set(request_id)


class RequestIdFilter(logging.Filter):
    """Adds the bound request id (`bind_request_id`) to a record that names none itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = _REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of `log.format` ("text" or "json")."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(log_format: str, level: str) -> None:
    """Send every log record to stderr in the chosen format (idempotent)."""
    # No format here or gunicorn's prints the caller's file and line or the thread and process names:
    # skip collecting them for every record (Python's logging HOWTO, "Optimization"; two records per
    # enrollment). The process id stays: every line prints it, as gunicorn's own lines did.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = GatewayLogHandler(_underlying(sys.stderr))
    handler.setFormatter(formatter_for(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gateway", False):
            root.removeHandler(old)
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)


# -- what bypasses the logging module -----------------------------------------------------------------

_TRACEBACK_START = "Traceback (most recent call last):"


class JsonLineStream(io.TextIOBase):
    """sys.stdout or sys.stderr of a process that logs JSON: each line written to it by something other than
    the logging module (gunicorn's boot errors and warnings, gevent's report of a failed greenlet, a
    library's print) comes out as one JSON record of logger `name` (stdout or stderr), and a traceback
    printed line by line as one record whose `exception` holds it, so no line of the stream is anything
    but a JSON object.

    The log handler writes to the stream beneath (`configure_logging`), never through this one.
    """

    def __init__(self, stream: TextIO, name: str, level: int) -> None:
        super().__init__()
        self.stream = stream
        self.name = name
        self.level = level
        self._formatter = JsonFormatter()
        self._lock = threading.Lock()
        self._partial = ""
        self._traceback: list[str] = []
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a gunicorn worker forked while another thread held it

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", "utf-8"))

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return False  # nothing written here reaches a terminal as written

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial and not self._traceback:
                line, self._partial = self._partial, ""
                self._line(line)
            self.stream.flush()

    def _line(self, line: str) -> None:
        if self._traceback:
            self._traceback.append(line)
            if line and not line[0].isspace():  # "ValueError: ...": the last line of a traceback
                self._emit(logging.ERROR, line, "\n".join(self._traceback))
                self._traceback = []
        elif line == _TRACEBACK_START:
            self._traceback = [line]
        elif line.strip():
            self._emit(self.level, line, None)

    def _emit(self, level: int, message: str, exception: str | None) -> None:
        record = logging.LogRecord(self.name, level, "", 0, "%s", (message,), None)
        record.exc_text = exception
        try:
            self.stream.write(self._formatter.format(record) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the stream beneath is gone: there is nowhere left to say so
            pass


def _underlying(stream: TextIO) -> TextIO:
    return stream.stream if isinstance(stream, JsonLineStream) else stream


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("gateway.uncaught").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("gateway.uncaught").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def capture_process_output(log_format: str) -> None:
    """Route what this process would write past the log handler into log records: Python warnings and
    uncaught exceptions (main thread and threads, each one record), and in json mode every other line
    written to sys.stdout or sys.stderr (JsonLineStream). For the entry points of `gateway serve`'s
    processes (the supervisor and each arbiter, whose workers inherit it), after `configure_logging`.

    Writes that bypass Python's streams (a C library writing to file descriptor 2, a fatal error's
    dump) are not caught."""
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    if log_format == "json":
        if not isinstance(sys.stderr, JsonLineStream):
            sys.stderr = cast(TextIO, JsonLineStream(sys.stderr, "stderr", logging.ERROR))
        if not isinstance(sys.stdout, JsonLineStream):
            sys.stdout = cast(TextIO, JsonLineStream(sys.stdout, "stdout", logging.INFO))


_URL = re.compile(r"https?://[^\s)]+")


def announcer(log_format: str) -> Callable[[str], None]:
    """How `gateway serve` prints where it listens, one line at a time on stdout: as it is (text), or as
    a JSON record of logger gateway.serve whose `urls` lists the URLs the line names (json)."""
    if log_format != "json":
        return lambda line: print(line, file=sys.stdout, flush=True)
    formatter = JsonFormatter()

    def _announce(line: str) -> None:
        record = logging.LogRecord("gateway.serve", logging.INFO, "", 0, "%s", (" ".join(line.split()),), None)
        record.urls = _URL.findall(line)
        stream = _underlying(sys.stdout)
        stream.write(formatter.format(record) + "\n")
        stream.flush()

    return _announce
