"""JSON log lines for a service's own loggers (``vigil_<service>.*``): one object per line."""

from __future__ import annotations

import logging
import sys
import time
import traceback
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


#: Exceptions whose text is about the infrastructure (a host, a port, a timeout, a Redis or HTTP
#: error reply), never about a transaction: their messages are logged.
_INFRASTRUCTURE_MODULES = ("redis.", "httpx", "httpcore", "h11", "anyio", "asyncio", "ssl")


def _text_is_safe(exc: BaseException) -> bool:
    module = type(exc).__module__ + "."
    return isinstance(exc, OSError | TimeoutError) or module.startswith(_INFRASTRUCTURE_MODULES)


def exception_text(exc_info: Any) -> str:
    """An exception as a log line carries it: what Python prints for it (each exception of the
    chain with its traceback: files, lines, code), but each message only when
    :func:`_text_is_safe`. The message of any other exception (a ``KeyError`` of a card id, a
    validation error quoting its input) may carry a transaction's data, which no log line holds
    (README, *Privacy*): it is withheld."""
    exc = exc_info[1]
    chain: list[tuple[BaseException, str]] = []
    link = ""
    while exc is not None and all(exc is not seen for seen, _ in chain):
        chain.append((exc, link))
        if exc.__cause__ is not None:
            exc, link = exc.__cause__, _CAUSE
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc, link = exc.__context__, _CONTEXT
        else:
            exc = None
    parts: list[str] = []
    for each, link in reversed(chain):  # the first raised first, as Python prints them
        if each.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(each.__traceback__))
        name = type(each).__qualname__
        if type(each).__module__ not in ("builtins", "__main__"):
            name = f"{type(each).__module__}.{name}"
        text = str(each) if _text_is_safe(each) else "<withheld>"
        parts.append(f"{name}: {text}\n" if text else f"{name}\n")
        if isinstance(each, BaseExceptionGroup):  # each of its exceptions, as Python shows them
            for k, inner in enumerate(each.exceptions, 1):
                shown = exception_text((type(inner), inner, inner.__traceback__))
                parts.append(f"  +---------------- {k} ----------------\n")
                parts.extend(f"  | {line}\n" for line in shown.splitlines())
        parts.append(link)
    return "".join(parts).rstrip("\n")


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


class JsonFormatter(logging.Formatter):
    """``ts``, ``level``, ``logger``, ``msg``, every ``extra=`` field, and ``exc`` if any (its
    messages withheld but for the infrastructure's: :func:`exception_text`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(
            record.created, record.levelname, record.name, record.getMessage(), vars(record)
        )
        if record.exc_info:
            entry["exc"] = exception_text(record.exc_info)
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
    # uvicorn's own lines too (its start-up, and the traceback of an exception an app re-raises
    # once it has answered 500: Starlette always does), in the same JSON, their exceptions'
    # messages withheld as the service's own are (README, *Privacy*).
    for each in (logger, logging.getLogger("uvicorn.error")):
        if not any(isinstance(h, _StderrHandler) for h in each.handlers):
            handler = _StderrHandler()
            handler.setFormatter(JsonFormatter())
            each.addHandler(handler)
        each.propagate = False
    return logger
