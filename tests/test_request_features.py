"""The shared request-time transform and business->request mapping (vigil_contracts)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vigil_contracts.request_features import (
    CARD_HISTORY,
    HISTORY_EVENTS,
    OUTPUT_FEATURES,
    REQUEST_FIELDS,
    STORED_INPUTS,
    request_fields,
    transform_columns,
    transform_row,
    transform_row_vector,
    transform_vector_columns,
)

NOW = datetime(2026, 11, 20, 3, 30, tzinfo=UTC)
KNOWN = {
    "card_amount_avg_30d": 20.0,
    "card_amount_std_30d": 5.0,
    "card_last_txn_epoch": NOW.timestamp() - 120,
    "card_home_country": "FR",
    "device_first_seen_epoch": NOW.timestamp() - 2 * 86400,
    "eur_per_unit": 1.0,  # the amount's currency is EUR here
}


def _row(**overrides):
    # 03:30 UTC is 04:30 local time in Germany (in the US it would be 22:30 the day before).
    return {**request_fields(160.0, NOW, "ecom", "DE", True), **KNOWN, **overrides}


def test_known_entity_features():
    out = transform_row(_row())
    assert list(out) == list(OUTPUT_FEATURES)
    assert out["txn_amount"] == 160.0
    assert out["amount_to_card_avg_30d"] == 8.0
    assert out["amount_zscore_card_30d"] == 28.0
    assert out["hour_of_day"] == 4.0 and out["is_night"] == 1.0
    assert out["channel_code"] == 1.0
    assert math.isclose(out["seconds_since_card_last_txn"], 120.0)
    assert math.isclose(out["device_age_days"], 2.0)
    assert out["is_new_device"] == 0.0
    assert out["country_mismatch"] == 1.0


def _events_row(**overrides):
    """The card's history as Feast stores it: its events (here 15 and 25 EUR in France, an hour
    and a day before, and one 31 days before, out of the 30-day window)."""
    us = int(NOW.timestamp() * 1_000_000)
    events = {
        "card_event_us": [us - 31 * 86_400_000_000, us - 86_400_000_000, us - 3_600_000_000],
        "card_event_amounts": [1000.0, 15.0, 25.0],
        "card_event_countries": ["DE", "FR", "FR"],
    }
    row = {**_row(), **events, **overrides}
    for name in CARD_HISTORY:
        row.pop(name, None)
    return row


def test_the_cards_history_is_finished_from_its_events_at_request_time():
    out = transform_row(_events_row())
    assert out["amount_to_card_avg_30d"] == 8.0 and out["amount_zscore_card_30d"] == 28.0
    assert out["country_mismatch"] == 1.0
    assert transform_row_vector(_events_row()) == _as_vector(out)
    columns = transform_vector_columns({k: [v] * 3 for k, v in _events_row().items()})
    assert [c[0] for c in columns] == _as_vector(out)
    # An unknown card (no events: None online, NaN offline) has no history.
    for gone in (None, NAN):
        unknown = _events_row(card_event_us=gone, card_event_amounts=gone)
        assert transform_row(unknown)["amount_to_card_avg_30d"] is None
        assert _identical(transform_row_vector(unknown), _as_vector(transform_row(unknown)))
    # Events at the request's own instant or later are not history.
    later = _events_row(card_event_us=[int(NOW.timestamp() * 1_000_000)] * 3)
    assert transform_row(later)["amount_to_card_avg_30d"] is None


def test_a_rescore_sees_the_card_and_the_device_as_before_its_own_decision():
    """Once the streamer stored a decided transaction, its card's row holds it (and its
    device's row says "first seen" then). Scored again, "the previous transaction" and "seen
    before" still mean before this one: the features equal those of the first scoring."""
    us = int(NOW.timestamp() * 1_000_000)
    first = _events_row(card_last_txn_epoch=NOW.timestamp() - 3600, device_first_seen_epoch=None)
    stored = _events_row(
        card_event_us=[*first["card_event_us"], us],
        card_event_amounts=[*first["card_event_amounts"], 160.0],
        card_event_countries=[*first["card_event_countries"], "DE"],
        card_last_txn_epoch=NOW.timestamp(),
        device_first_seen_epoch=NOW.timestamp(),
    )
    again = transform_row(stored)
    assert again == transform_row(first)
    assert again["seconds_since_card_last_txn"] == 3600.0
    assert again["is_new_device"] == 1.0 and again["device_age_days"] is None
    assert transform_row_vector(stored) == _as_vector(again)
    columns = transform_vector_columns({k: [v] * 3 for k, v in stored.items()})
    assert [c[0] for c in columns] == _as_vector(again)
    # Stored events only at or after this instant, none in the 30 days before: no known gap.
    only_later = _events_row(
        card_event_us=[us, us + 5],
        card_event_amounts=[1.0, 2.0],
        card_event_countries=["DE", "DE"],
        card_last_txn_epoch=(us + 5) / 1e6,
    )
    assert transform_row(only_later)["seconds_since_card_last_txn"] is None
    # A device seen before this transaction has its age, whatever came after.
    seen = transform_row(_row(device_first_seen_epoch=NOW.timestamp() - 86400))
    assert seen["is_new_device"] == 0.0 and seen["device_age_days"] == pytest.approx(1.0)


def test_amounts_are_compared_in_eur():
    # 160 USD at 0.90 EUR per USD is 144 EUR: 7.2x a card averaging 20 EUR.
    out = transform_row(_row(eur_per_unit=0.9))
    assert out["txn_amount"] == pytest.approx(144.0)
    assert out["amount_to_card_avg_30d"] == pytest.approx(7.2)
    assert out["amount_zscore_card_30d"] == pytest.approx((144.0 - 20.0) / 5.0)
    # A currency without a rate: the amount features are missing, never taken as EUR.
    for gone in (None, math.nan):
        out = transform_row(_row(eur_per_unit=gone))
        assert out["txn_amount"] is None and out["amount_to_card_avg_30d"] is None
        assert out["amount_zscore_card_30d"] is None and out["hour_of_day"] == 4.0
        vector = transform_row_vector(_row(eur_per_unit=gone))
        assert all(v != v for v in vector[:3])


def test_unknown_entities_give_missing_features_not_errors():
    # Feast passes None online and NaN offline for an entity it does not hold.
    for gone in (None, float("nan")):
        out = transform_row(_row(**{k: gone for k in KNOWN}))
        for name in (
            "amount_to_card_avg_30d",
            "amount_zscore_card_30d",
            "seconds_since_card_last_txn",
            "device_age_days",
            "country_mismatch",
        ):
            assert out[name] is None, name
        assert out["is_new_device"] == 1.0  # a device was sent, and the store never saw it


def test_no_device_and_no_country_are_missing_not_guessed():
    out = transform_row({**request_fields(10.0, NOW, "pos", "", False), **KNOWN})
    assert out["is_new_device"] == 0.0 and out["device_age_days"] is None
    assert out["country_mismatch"] is None
    assert out["channel_code"] == 0.0


def test_hour_is_local_time_in_the_countrys_zone_whatever_the_offset_written():
    winter = datetime(2026, 1, 15, 3, 30, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 3, 30, tzinfo=UTC)
    # One instant, written in four offsets: one hour of day wherever the country is known.
    for offset in (0, 1, 9, -6):
        tz = timezone(timedelta(hours=offset))
        tokyo = request_fields(1.0, winter.astimezone(tz), "mobile", "JP", True)
        assert (
            tokyo["txn_hour"] == 12 and tokyo["txn_epoch"] == winter.timestamp()
        )  # 12:30 in Tokyo
        # Daylight saving is the zone's: New York is UTC-5 in winter, UTC-4 in summer.
        assert request_fields(1.0, winter.astimezone(tz), "ecom", "US", True)["txn_hour"] == 22
        assert request_fields(1.0, summer.astimezone(tz), "ecom", "US", True)["txn_hour"] == 23
    # A country without a zone (or none): the offset the payer's timestamp was written with.
    assert (
        request_fields(1.0, winter.astimezone(timezone(timedelta(hours=9))), "pos", "", True)[
            "txn_hour"
        ]
        == 12
    )
    assert (
        request_fields(1.0, winter.astimezone(timezone(timedelta(hours=-6))), "pos", "XK", True)[
            "txn_hour"
        ]
        == 21
    )


def test_every_country_zone_exists():
    from vigil_contracts.local_time import COUNTRY_TIME_ZONES, zone_of

    assert all(zone_of(country) is not None for country in COUNTRY_TIME_ZONES)
    from vigil.world import COUNTRIES

    assert set(COUNTRIES) <= set(COUNTRY_TIME_ZONES)


def test_column_form_equals_row_form():
    rows = [
        _row(),
        _row(amount=3.0, channel="pos", device_present=0),
        _row(card_amount_avg_30d=None),
    ]
    cols = {k: [r.get(k) for r in rows] for k in rows[0]}
    out = transform_columns(cols)
    for i, row in enumerate(rows):
        assert {k: v[i] for k, v in out.items()} == transform_row(row)


def test_missing_inputs_of_every_kind_read_as_missing():
    import numpy as np

    for gone in (None, math.nan, np.float64("nan"), np.float32("nan")):
        out = transform_row(
            _row(card_amount_avg_30d=gone, card_last_txn_epoch=gone, card_home_country=gone)
        )
        assert out["amount_to_card_avg_30d"] is None, gone
        assert out["seconds_since_card_last_txn"] is None, gone
        assert out["country_mismatch"] is None, gone
    # numpy numbers and text are values, never missing
    out = transform_row(_row(card_amount_avg_30d=np.float64(20.0), card_home_country="DE"))
    assert out["amount_to_card_avg_30d"] == 8.0 and out["country_mismatch"] == 0.0


# --- the encoder's vector form -------------------------------------------------------------

NAN = math.nan


def _as_vector(outputs: dict) -> list[float]:
    """transform_row's outputs as the encoder's vector entries: a finite float, else NaN."""
    return [
        NAN if v is None or not math.isfinite(v) else float(v)
        for v in (outputs[name] for name in OUTPUT_FEATURES)
    ]


def _identical(a: list, b: list) -> bool:
    """Equal entry by entry, NaN with NaN, and of the same type and sign (0.0 is not -0.0)."""
    return len(a) == len(b) and all(
        type(x) is type(y)
        and (x == y and math.copysign(1, x) == math.copysign(1, y) or x != x and y != y)
        for x, y in zip(a, b, strict=True)
    )


def _outcome(function, row):
    try:
        return "value", function(row)
    except Exception as exc:  # noqa: BLE001 - the two forms must fail alike
        return "error", type(exc)


def _random_rows(n: int, seed: int):
    import random

    import numpy as np

    rng = random.Random(seed)
    now = NOW.timestamp()
    floats = [
        None,
        NAN,
        math.inf,
        -math.inf,
        0.0,
        -0.0,
        1e-300,
        -5.0,
        20.0,
        1e308,
        3,
        True,
        np.float64(20.0),
        np.float64("nan"),
        "12.5",
        "",
        b"1",
    ]
    choices = {
        "amount": [160.0, 0.0, -0.0, 1e308, 3.25, 7, NAN, math.inf, "12", None, True],
        "txn_epoch": [now, 0.0, now + 0.5, 1e300, NAN, -math.inf, 1795319940, "x", None],
        "txn_hour": [0, 3, 5, 6, 23, -1, 24, 3.0, 3.7, True, "4", None],
        "channel": ["pos", "ecom", "mobile", "atm", "", None, 1, "POS"],
        "country": ["DE", "FR", "", None, NAN, 5, "de"],
        "device_present": [0, 1, 2, -1, None, True, False, 0.0, 1.0, "", "1"],
        "card_amount_avg_30d": floats,
        "card_amount_std_30d": floats,
        "card_last_txn_epoch": [None, NAN, now - 120, now + 50, -math.inf, math.inf, 7, "1"],
        "card_home_country": ["FR", "DE", "", None, NAN, 0, np.float32("nan"), "de"],
        "device_first_seen_epoch": [None, NAN, now - 86400 * 3, now + 10, math.inf, 5, "2"],
    }
    for _ in range(n):
        row = {name: rng.choice(values) for name, values in choices.items()}
        for name in list(row):
            if rng.random() < 0.05:
                del row[name]  # an absent field, required or not
        yield row


def test_vector_form_equals_transform_row_on_many_rows(monkeypatch):
    import random

    from vigil_contracts import request_features

    handed_over = []  # rows the vector form left to transform_row itself
    monkeypatch.setattr(
        request_features, "transform_row", lambda row: handed_over.append(row) or transform_row(row)
    )

    rows = list(_random_rows(20_000, seed=1))
    # The encoder's own shape, many times over: request fields of their dtypes, stored inputs
    # a float (NaN and inf included) or None, text or None.
    rng = random.Random(2)
    typical = list(_random_rows(5_000, seed=3))
    for row in typical:
        row.update(
            amount=rng.choice([0.0, -0.0, 1e-310, 12.5, 1e308, rng.uniform(0, 900)]),
            txn_epoch=NOW.timestamp() + rng.uniform(-1e6, 1e6),
            txn_hour=rng.randrange(-2, 26),
            channel=rng.choice(["pos", "atm", ""]),
            device_present=rng.choice([0, 1, 3, None]),
            country=rng.choice(["DE", "FR", "", None]),
        )
        for name in (
            "card_amount_avg_30d",
            "card_amount_std_30d",
            "card_last_txn_epoch",
            "device_first_seen_epoch",
        ):
            if not isinstance(row.get(name), float | None):
                row[name] = rng.choice([None, NAN, rng.uniform(-10, 1e9)])
        if not isinstance(row.get("card_home_country"), str | None):
            row["card_home_country"] = rng.choice(["FR", "DE", "", None])
    every = rows + typical + [_row(), _row(country=""), _row(card_home_country=None)]
    computed = 0
    for row in every:
        want = _outcome(lambda r: _as_vector(transform_row(r)), row)
        got = _outcome(transform_row_vector, row)
        assert got[0] == want[0], row
        if want[0] == "error":
            assert got[1] is want[1], row
        else:
            assert _identical(got[1], want[1]), (row, got, want)
            computed += 1
    assert computed > 5_000
    assert len(every) - len(handed_over) > 3_000  # its own path, not only transform_row's


def test_vector_form_of_known_and_unknown_entities():
    assert transform_row_vector(_row()) == [160.0, 8.0, 28.0, 4.0, 1.0, 1.0, 120.0, 2.0, 0.0, 1.0]
    gone = transform_row_vector(_row(**{k: None for k in KNOWN if k != "eur_per_unit"}))
    assert _identical(gone, [160.0, NAN, NAN, 4.0, 1.0, 1.0, NAN, NAN, 1.0, NAN])


# The card's history as scalars (rows without its events carry it themselves).
INPUTS = [
    *REQUEST_FIELDS,
    *CARD_HISTORY,
    *(name for names in STORED_INPUTS.values() for name in names if name != HISTORY_EVENTS),
]
INPUTS = [n for n in INPUTS if not n.startswith("card_event_")]


def _typical_rows(n: int, seed: int):
    """Rows of the shape the encoder builds (request fields of their dtypes, finite amounts and
    epochs; stored inputs a float, NaN, inf or None, text or None), odd values included."""
    import random

    rng = random.Random(seed)
    now = NOW.timestamp()
    floats = [None, NAN, math.inf, -math.inf, 0.0, -0.0, 1e-310, -5.0, 20.0, 1e308, -1e308]
    for _ in range(n):
        yield {
            "amount": rng.choice([0.0, -0.0, 1e-310, 12.5, -3.0, 1e300, rng.uniform(0, 900)]),
            "txn_epoch": rng.choice([now + rng.uniform(-1e6, 1e6), 0.0, -1e300, 1e300]),
            "txn_hour": rng.randrange(-2, 26),
            "channel": rng.choice(["pos", "ecom", "mobile", "atm", "", "POS"]),
            "country": rng.choice(["DE", "FR", "", None]),
            "device_present": rng.choice([0, 1, 3, -1, None]),
            "card_amount_avg_30d": rng.choice(floats + [rng.uniform(-10, 1e4)]),
            "card_amount_std_30d": rng.choice(floats + [rng.uniform(0, 1e3)]),
            "card_last_txn_epoch": rng.choice(floats + [now - rng.uniform(-1e3, 1e6)]),
            "card_home_country": rng.choice(["FR", "DE", "", None]),
            "device_first_seen_epoch": rng.choice(floats + [now - rng.uniform(-1e3, 1e8)]),
        }


def _columns(rows: list[dict]) -> dict[str, list]:
    return {name: [row.get(name) for row in rows] for name in INPUTS}


def test_column_form_equals_vector_form_row_for_row():
    import random

    rng = random.Random(5)
    typical = list(_typical_rows(20_000, seed=6))
    odd = list(_random_rows(4_000, seed=8))
    computed = left = 0
    start = 0
    while start < len(typical):
        size = rng.choice([1, 2, 7, 100, 1000])
        batch = typical[start : start + size]
        start += size
        if rng.random() < 0.2:  # one row the vector form hands to transform_row
            batch = [*batch, rng.choice(odd)]
        outputs = transform_vector_columns(_columns(batch))
        if outputs is None:
            left += 1
            continue
        computed += 1
        assert len(outputs) == len(OUTPUT_FEATURES)
        assert all(type(column) is list and len(column) == len(batch) for column in outputs)
        for i, row in enumerate(batch):
            want = transform_row_vector(row)
            got = [column[i] for column in outputs]
            assert _identical(got, want), (row, got, want)
    assert computed > 50 and left > 5


def test_column_form_leaves_other_batches_to_the_rows():
    good = list(_typical_rows(50, seed=9))
    good = [row for row in good if abs(row["amount"]) < 1e300 and abs(row["txn_epoch"]) < 1e300]
    assert transform_vector_columns(_columns(good)) is not None
    for name, value in [
        ("amount", 5),
        ("amount", NAN),
        ("amount", math.inf),
        ("amount", None),
        ("txn_epoch", -math.inf),
        ("txn_hour", 3.0),
        ("txn_hour", True),
        ("channel", None),
        ("device_present", 1.0),
        ("device_present", True),
        ("card_amount_avg_30d", 3),
        ("card_amount_std_30d", "1"),
        ("card_last_txn_epoch", True),
        ("device_first_seen_epoch", 7),
        ("card_home_country", NAN),
        ("country", 5),
    ]:
        rows = [*good[:10], {**good[10], name: value}, *good[11:]]
        assert transform_vector_columns(_columns(rows)) is None, (name, value)
    # every amount finite, but their sum is not: left to the rows, which compute it
    huge = [{**row, "amount": 1e308} for row in good[:3]]
    assert transform_vector_columns(_columns(huge)) is None
    columns = _columns(good)
    del columns["device_first_seen_epoch"]  # an input the batch does not carry
    assert transform_vector_columns(columns) is None
    assert transform_vector_columns(_columns([])) == [[] for _ in OUTPUT_FEATURES]


def test_request_columns_are_the_request_fields_of_each_transaction() -> None:
    import random
    from datetime import timedelta, timezone

    from vigil_contracts.request_features import request_columns

    rng = random.Random(13)
    rows = []
    for _ in range(500):
        tz = timezone(timedelta(minutes=rng.choice([-600, -330, 0, 60, 345, 840])))
        when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 3e7))
        rows.append(
            (
                rng.choice([1, 12.5, 1e9, 0.01]),
                when.astimezone(tz),
                rng.choice(["pos", "ecom", "mobile"]),
                rng.choice(["", "FR", "JP"]),
                rng.random() < 0.5,
            )
        )
    columns = request_columns(*zip(*rows, strict=True))
    for i, row in enumerate(rows):
        expected = request_fields(*row)
        got = {name: values[i] for name, values in columns.items()}
        assert got == expected and [type(v) for v in got.values()] == [
            type(v) for v in expected.values()
        ]
