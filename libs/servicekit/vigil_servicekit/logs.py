"""JSON log lines for a service's own loggers (``vigil_<service>.*``): one object per line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``ts``, ``level``, ``logger``, ``msg``, every ``extra=`` field, and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest swaps it between tests)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


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
