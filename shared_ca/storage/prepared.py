"""Hot-path statements compiled once per dialect and run straight on the DBAPI cursor.

SQLAlchemy Core spends 30-60 µs per execution on its execution context (cache-key lookup, result
set-up, per-parameter processing through generic machinery); the issuing transaction runs five
statements per enrollment, so that overhead was a tenth of an enrollment's CPU. A PreparedStatement
does the same work with SQLAlchemy's own compiled SQL and its own type processors, resolved once:
the stored values are byte for byte what Core would have written (tests/test_prepared.py compares
rows written both ways on SQLite and PostgreSQL).

Only for statements on the enrollment path (the issuing writes and the look-ups before them);
everything else stays on plain Core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.sql import Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    compiled: SQLCompiler
    positional: tuple[str, ...] | None  # bind names in placeholder order (qmark), None for named styles
    processors: Mapping[str, Processor]
    # (bind name, parameter key, literal value, required) of each bind; None: names need escaping,
    # so the compiled statement's own construct_params fills them in.
    binds: tuple[tuple[str, str, Any, bool], ...] | None
    # A SELECT's columns: (key, result processor) in order; empty for other statements.
    columns: tuple[tuple[str, Processor | None], ...]


def _bind_values(prepared: _Compiled, params: Mapping[str, Any]) -> MutableMapping[str, Any]:
    """Every bind's value: the caller's parameter, else the statement's literal (what construct_params
    does, without its generality)."""
    if prepared.binds is None:
        return prepared.compiled.construct_params(dict(params))
    values: dict[str, Any] = {}
    for name, key, literal, required in prepared.binds:
        if key in params:
            values[name] = params[key]
        elif required:
            raise InvalidRequestError(f"A value is required for bind parameter {key!r}")
        else:
            values[name] = literal
    return values


class PreparedStatement:
    """One statement (an INSERT with a fixed set of columns, an upsert, an UPDATE, a one-row SELECT)
    compiled once per dialect; it runs inside the caller's transaction."""

    def __init__(self, statement: ClauseElement, *, columns_from_params: bool = False) -> None:
        self.statement = statement
        # A bare INSERT lists no columns: compile it for the columns of the parameters it is given.
        self.columns_from_params = columns_from_params
        self._cache: dict[tuple[str, frozenset[str] | None], _Compiled] = {}
        self._lock = threading.Lock()

    def _compiled(self, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
        key = (dialect.name, frozenset(params) if self.columns_from_params else None)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            compiled = self.statement.compile(dialect=dialect, column_keys=sorted(params) if key[1] else None)
            assert isinstance(compiled, SQLCompiler)
            processors: dict[str, Processor] = {}
            for bind, name in compiled.bind_names.items():
                processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if processor is not None:
                    processors[name] = processor
            positional = tuple(compiled.positiontup or ()) if dialect.positional else None
            binds = None
            if not compiled.escaped_bind_names:
                binds = tuple(
                    (name, bind.key, bind.value, bool(bind.required)) for bind, name in compiled.bind_names.items()
                )
            columns: tuple[tuple[str, Processor | None], ...] = ()
            if isinstance(self.statement, Select):
                columns = tuple(
                    (key, column.type.dialect_impl(dialect).result_processor(dialect, None))
                    for key, column in self.statement.selected_columns.items()
                )
            found = _Compiled(compiled.string, compiled, positional, processors, binds, columns)
            self._cache[key] = found
        return found

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run with `params` (bind name -> value); the first row it returns (RETURNING), else None."""
        row = self._run(conn, params, lambda cursor: cursor.fetchone() if cursor.description else None)
        return tuple(row) if row is not None else None

    def inserted_id(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT ... RETURNING id; the id."""
        row = self.execute(conn, params)
        if row is None:
            raise ValueError("the statement returned no row")
        return int(row[0])

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run a SELECT; its first row as {column key: value}, each value through its column type's
        result processing as Core would return it, or None when there is no row."""
        row = self._run(conn, params, lambda cursor: cursor.fetchone())
        if row is None:
            return None
        columns = self._compiled(conn.dialect, params).columns
        return {
            key: value if process is None else process(value)
            for (key, process), value in zip(columns, row, strict=True)
        }

    def rowcount(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an UPDATE or DELETE; how many rows it changed."""
        return int(self._run(conn, params, lambda cursor: cursor.rowcount))

    def _run(self, conn: Connection, params: Mapping[str, Any], result: Callable[[Any], Any]) -> Any:
        """Execute on the connection's DBAPI cursor inside its transaction; a DBAPI error is raised as
        SQLAlchemy's wrapper for it (IntegrityError, OperationalError …), as Connection.execute does."""
        prepared = self._compiled(conn.dialect, params)
        values = _bind_values(prepared, params)
        try:
            for name, processor in prepared.processors.items():
                values[name] = processor(values[name])
        except (ValueError, TypeError) as exc:  # a value its column type refuses, wrapped as Core does
            hidden = conn.engine.hide_parameters  # as Core does: no parameter reaches a message or a log
            raise StatementError(str(exc), prepared.sql, dict(params), exc, hide_parameters=hidden) from exc
        arguments: Any = (
            tuple(values[name] for name in prepared.positional) if prepared.positional is not None else values
        )
        dbapi = conn.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(prepared.sql, arguments)
            return result(cursor)
        except dbapi.Error as exc:
            raise DBAPIError.instance(
                prepared.sql,
                arguments,
                exc,
                dbapi.Error,
                hide_parameters=conn.engine.hide_parameters,
                dialect=conn.dialect,
            ) from exc
        finally:
            cursor.close()
