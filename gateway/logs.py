"""Logging set-up: readable text for people, one JSON object a line for machines.

Log lines carry what clients send (subjects, SANs, User-Agent, paths, transaction ids, user names),
so the formatters, not the call sites, make every record one line that a client cannot forge:

- text: control characters become visible escapes (`\\n`, `\\x1b`, `\\u2028`); a traceback follows on
  continuation lines that all begin with `CONTINUATION`, so a line that begins otherwise is a record.
- json: `json.dumps` with ASCII output escapes every control and non-ASCII character, and `extra=`
  values of any type are reduced to JSON types first, so a record is always one JSON object.

gunicorn's own error log goes through the same handler (`GunicornLogger`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

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
    handler = GatewayLogHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gateway", False):
            root.removeHandler(old)
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
