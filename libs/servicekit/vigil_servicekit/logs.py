"""JSON log lines for a service's own loggers (``vigil_<service>.*``): one object per line."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
#: Keys ``extra=`` may not carry (``Logger.makeRecord`` refuses them).
RESERVED_LOG_KEYS = frozenset(_STANDARD)


def _entry(
    created: float, level: str, logger: str, msg: str, fields: dict[str, Any]
) -> dict[str, Any]:
    entry = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    for key, value in fields.items():
        if key not in _STANDARD and not key.startswith("_"):
            entry[key] = value
    return entry


class JsonFormatter(logging.Formatter):
    """``ts``, ``level``, ``logger``, ``msg``, every ``extra=`` field, and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(
            record.created, record.levelname, record.name, record.getMessage(), vars(record)
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest swaps it between tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit_line(
        self, logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]
    ) -> None:
        """Write the line :class:`JsonFormatter` makes of ``logger.log(level, msg, extra=fields)``,
        as :meth:`emit` writes it, without the record (see :func:`sole_json_handler`)."""
        created = time.time()
        line = orjson.dumps(
            _entry(created, logging.getLevelName(level), logger.name, msg, fields), default=str
        ).decode()
        self.acquire()
        try:
            try:
                self.stream.write(line + self.terminator)
                self.flush()
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - what Handler.emit does: report, never raise
                record = logger.makeRecord(
                    logger.name, level, __file__, 0, msg, (), None, extra=fields
                )
                record.created = created
                self.handleError(record)
        finally:
            self.release()


def sole_json_handler(logger: logging.Logger, level: int) -> _StderrHandler | None:
    """The handler a record of ``logger`` at ``level`` would reach when it is
    :func:`configure_logging`'s JSON handler and nothing else could see or change the record (no
    other handler on the way, no filter, the standard record factory); else None.

    The request middleware then has that handler write its line straight away: building the
    record and taking it through the handler chain was most of the access line's cost, and the
    line is the same.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord or logger.filters:
        return None
    if not logger.isEnabledFor(level):
        return None
    found: _StderrHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level < handler.level:
                continue
            if (
                found is not None
                or type(handler) is not _StderrHandler
                or handler.filters
                or type(handler.formatter) is not JsonFormatter
            ):
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def configure_logging(
    name: str, level: str, *, silence_uvicorn_access: bool = False
) -> logging.Logger:
    """Give the logger ``name`` (and its children) one JSON handler on stderr; idempotent.

    ``silence_uvicorn_access`` switches uvicorn's plain-text access log off in this process: the
    request middleware already writes the one line per request, with the request id.
    Returns the logger, whose children (``.getChild("access")``) the other pieces log to.
    """
    if silence_uvicorn_access:
        logging.getLogger("uvicorn.access").disabled = True
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    return logger
