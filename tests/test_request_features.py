"""The shared request-time transform and business->request mapping (vigil_contracts)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from vigil_contracts.request_features import (
    OUTPUT_FEATURES, request_fields, transform_columns, transform_row,
)

NOW = datetime(2026, 11, 20, 3, 30, tzinfo=timezone.utc)
KNOWN = {
    "card_amount_avg_30d": 20.0, "card_amount_std_30d": 5.0,
    "card_last_txn_epoch": NOW.timestamp() - 120, "card_home_country": "FR",
    "device_first_seen_epoch": NOW.timestamp() - 2 * 86400,
}


def _row(**overrides):
    return {**request_fields(160.0, NOW, "ecom", "US", True), **KNOWN, **overrides}


def test_known_entity_features():
    out = transform_row(_row())
    assert list(out) == list(OUTPUT_FEATURES)
    assert out["txn_amount"] == 160.0
    assert out["amount_to_card_avg_30d"] == 8.0
    assert out["amount_zscore_card_30d"] == 28.0
    assert out["hour_of_day"] == 3.0 and out["is_night"] == 1.0
    assert out["channel_code"] == 1.0
    assert math.isclose(out["seconds_since_card_last_txn"], 120.0)
    assert math.isclose(out["device_age_days"], 2.0)
    assert out["is_new_device"] == 0.0
    assert out["country_mismatch"] == 1.0


def test_unknown_entities_give_missing_features_not_errors():
    # Feast passes None online and NaN offline for an entity it does not hold.
    for gone in (None, float("nan")):
        out = transform_row(_row(**{k: gone for k in KNOWN}))
        for name in ("amount_to_card_avg_30d", "amount_zscore_card_30d",
                     "seconds_since_card_last_txn", "device_age_days", "country_mismatch"):
            assert out[name] is None, name
        assert out["is_new_device"] == 1.0  # a device was sent, and the store never saw it


def test_no_device_and_no_country_are_missing_not_guessed():
    out = transform_row({**request_fields(10.0, NOW, "pos", "", False), **KNOWN})
    assert out["is_new_device"] == 0.0 and out["device_age_days"] is None
    assert out["country_mismatch"] is None
    assert out["channel_code"] == 0.0


def test_hour_is_read_in_the_timestamps_own_offset():
    local = NOW.astimezone(timezone(timedelta(hours=9)))  # 12:30 in Tokyo
    fields = request_fields(1.0, local, "mobile", "JP", True)
    assert fields["txn_hour"] == 12 and fields["txn_epoch"] == NOW.timestamp()


def test_column_form_equals_row_form():
    rows = [_row(), _row(amount=3.0, channel="pos", device_present=0),
            _row(card_amount_avg_30d=None)]
    cols = {k: [r.get(k) for r in rows] for k in rows[0]}
    out = transform_columns(cols)
    for i, row in enumerate(rows):
        assert {k: v[i] for k, v in out.items()} == transform_row(row)


def test_missing_inputs_of_every_kind_read_as_missing():
    import numpy as np

    for gone in (None, math.nan, np.float64("nan"), np.float32("nan")):
        out = transform_row(_row(card_amount_avg_30d=gone, card_last_txn_epoch=gone,
                                 card_home_country=gone))
        assert out["amount_to_card_avg_30d"] is None, gone
        assert out["seconds_since_card_last_txn"] is None, gone
        assert out["country_mismatch"] is None, gone
    # numpy numbers and text are values, never missing
    out = transform_row(_row(card_amount_avg_30d=np.float64(20.0), card_home_country="US"))
    assert out["amount_to_card_avg_30d"] == 8.0 and out["country_mismatch"] == 0.0
