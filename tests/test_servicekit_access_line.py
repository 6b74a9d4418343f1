"""The access line written straight by the JSON handler equals the line the logging record path
writes, and the straight way is only taken when nothing else could see the record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from test_servicekit import LOGGER, make_app
from vigil_servicekit.logs import (
    JsonFormatter,
    _StderrHandler,
    configure_logging,
    sole_json_handler,
)

ACCESS = f"{LOGGER}.access"


async def _access_lines(capsys: pytest.CaptureFixture[str], request_id: str) -> list[str]:
    app = make_app()
    capsys.readouterr()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as c:
        await c.post(
            "/orders",
            json={"card_number": "4111-secret", "quantity": 3},
            headers={"x-request-id": request_id},
        )
        await c.get("/widgets/missing", headers={"x-request-id": request_id})
    return [line for line in capsys.readouterr().err.splitlines() if request_id in line]


@contextmanager
def json_handler_only() -> Iterator[None]:
    """pytest attaches its capture handlers to non-propagating loggers (ours) when a test's call
    starts: off for a block."""
    service = configure_logging(LOGGER, "INFO")
    foreign = [h for h in service.handlers if not isinstance(h, _StderrHandler)]
    for handler in foreign:
        service.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            service.addHandler(handler)


def _comparable(line: str) -> list[tuple[str, object]]:
    entry = json.loads(line)
    entry["ts"] = len(entry["ts"])  # same format, another millisecond
    entry["latency_ms"] = None
    return list(entry.items())  # the order of the members too


@pytest.fixture
def filtered_access_logger() -> Iterator[None]:
    """A filter on the access logger: the record path must be taken (the filter may look)."""
    logger = logging.getLogger(ACCESS)
    seen: list[logging.LogRecord] = []

    def look(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    logger.addFilter(look)
    try:
        yield
    finally:
        logger.removeFilter(look)
    assert seen, "the record path was not taken"


async def test_a_filter_on_the_access_logger_sees_every_record(
    capsys, filtered_access_logger
) -> None:
    assert len(await _access_lines(capsys, "rec-1")) == 2


async def test_both_ways_write_the_same_lines(capsys) -> None:
    with json_handler_only():
        assert sole_json_handler(logging.getLogger(ACCESS), logging.INFO) is not None
        straight = await _access_lines(capsys, "same-1")
    logger = logging.getLogger(ACCESS)
    logger.addFilter(lambda record: True)
    try:
        assert sole_json_handler(logger, logging.INFO) is None
        through_records = await _access_lines(capsys, "same-1")
    finally:
        logger.filters.clear()
    assert len(straight) == len(through_records) == 2
    assert [_comparable(line) for line in straight] == [
        _comparable(line) for line in through_records
    ]
    assert json.loads(straight[0])["quantity"] == 3  # a route's own log field


def test_the_straight_way_only_when_nothing_else_sees_the_record() -> None:
    with json_handler_only():
        _check_sole_json_handler()


def _check_sole_json_handler() -> None:
    access = logging.getLogger(ACCESS)
    service = logging.getLogger(LOGGER)
    handler = sole_json_handler(access, logging.INFO)
    assert isinstance(handler, _StderrHandler) and handler in service.handlers
    assert sole_json_handler(access, logging.DEBUG) is None  # not enabled

    other = logging.Handler()
    access.addHandler(other)  # e.g. pytest's caplog
    try:
        assert sole_json_handler(access, logging.INFO) is None
        other.setLevel(logging.ERROR)  # a handler the record does not reach does not matter
        assert sole_json_handler(access, logging.INFO) is handler
    finally:
        access.removeHandler(other)

    handler.addFilter(lambda record: True)
    try:
        assert sole_json_handler(access, logging.INFO) is None
    finally:
        handler.filters.clear()

    handler.setFormatter(logging.Formatter())
    try:
        assert sole_json_handler(access, logging.INFO) is None
    finally:
        handler.setFormatter(JsonFormatter())

    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *args, **kwargs: factory(*args, **kwargs))
    try:
        assert sole_json_handler(access, logging.INFO) is None
    finally:
        logging.setLogRecordFactory(factory)
    assert sole_json_handler(access, logging.INFO) is handler
