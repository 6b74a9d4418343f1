"""A request-time feature is declared once (vigil_contracts.request_features): a feature added
to the declarations appears in every generated form and in Feast's on-demand view, computed by
its one function."""

from __future__ import annotations

import importlib.util
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vigil_contracts import request_features as rf

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 20, 3, 30, tzinfo=UTC)
US = int(NOW.timestamp() * 1_000_000)
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MERCHANT_TILES = (
    "merchant_hour_index",
    "merchant_hour_count",
    "merchant_hour_small",
    "merchant_day_index",
    "merchant_day_count",
    "merchant_day_amount",
    "merchant_day_night",
)
EXTRA = "amount_to_merchant_avg_7d"

calls: list[tuple[float | None, float | None]] = []


def amount_to_merchant_avg_7d(
    txn_amount: float | None, merchant_amount_avg_7d: float | None
) -> float | None:
    """An extra feature: it reads an earlier feature and a window of a view no other reads."""
    calls.append((txn_amount, merchant_amount_avg_7d))
    if txn_amount is None or merchant_amount_avg_7d is None or merchant_amount_avg_7d <= 0:
        return None
    return txn_amount / merchant_amount_avg_7d


def _extended() -> rf.Declared:
    return rf.Declared((*rf.FEATURES, rf.RequestFeature.of(amount_to_merchant_avg_7d)))


def _row(**overrides) -> dict:
    """A row as Feast hands it over: request fields, the views' events, tiles and scalars, a
    rate. The merchant's tiles: 40 EUR three days ago, 60 EUR an hour ago (today)."""
    return {
        **rf.request_fields(160.0, NOW, "ecom", "DE", True),
        "card_event_us": [US - 2 * DAY_US, US - DAY_US],
        "card_event_amounts": [15.0, 25.0],
        "card_event_countries": ["FR", "FR"],
        "card_last_txn_epoch": NOW.timestamp() - 120,
        "merchant_hour_index": [US // HOUR_US - 1],
        "merchant_hour_count": [1],
        "merchant_hour_small": [0],
        "merchant_day_index": [US // DAY_US - 3, US // DAY_US],
        "merchant_day_count": [1, 1],
        "merchant_day_amount": [40.0, 60.0],
        "merchant_day_night": [0, 1],
        "device_first_seen_epoch": NOW.timestamp() - 2 * 86400,
        "eur_per_unit": 0.5,  # 160 in the amount's currency is 80 EUR
        **overrides,
    }


def _vector(outputs: dict, names) -> list[float]:
    return [
        math.nan if (v := outputs[n]) is None or not math.isfinite(v) else float(v) for n in names
    ]


def test_an_added_feature_is_in_every_generated_form_computed_by_its_function():
    extended = _extended()
    assert extended.outputs == (*rf.OUTPUT_FEATURES, EXTRA)
    # Its inputs: the merchant's tiles (its 7-day average is finished from them).
    assert extended.stored_inputs == {**rf.STORED_INPUTS, "merchant_stats": MERCHANT_TILES}
    assert list(extended.stored_inputs) == [
        "card_stats",
        "merchant_stats",
        "device_stats",
        "fx_rates",
    ]
    assert extended.windowed["merchant_stats"] == ("merchant_amount_avg_7d",)

    row = _row()
    calls.clear()
    out = extended.row(row)
    assert calls == [(80.0, 50.0)]  # once per row, on the EUR amount and the window
    assert out[EXTRA] == 1.6
    assert {k: v for k, v in out.items() if k != EXTRA} == rf.transform_row(row)

    want = _vector(out, extended.outputs)
    calls.clear()
    assert extended.row_vector(row) == want
    columns = extended.vector_columns({name: [value] * 3 for name, value in row.items()})
    assert columns is not None and [c[0] for c in columns] == want
    assert [c[2] for c in columns] == want
    assert extended.columns({name: [value] for name, value in row.items()})[EXTRA] == [1.6]
    assert extended.feast_columns({name: [value] for name, value in row.items()})[EXTRA] == [1.6]
    assert len(calls) == 1 + 3 + 1 + 1  # each form calls the one function once per row

    # A merchant unknown to the store: missing (NaN in vectors and in Feast's form).
    unknown = _row(**dict.fromkeys(MERCHANT_TILES))
    assert extended.row(unknown)[EXTRA] is None
    assert math.isnan(extended.row_vector(unknown)[-1])
    assert math.isnan(extended.feast_columns({k: [v] for k, v in unknown.items()})[EXTRA][0])
    # A row without the merchant's tiles carries the window itself.
    given = {k: v for k, v in _row().items() if k not in MERCHANT_TILES}
    assert extended.row({**given, "merchant_amount_avg_7d": 20.0})[EXTRA] == 4.0
    assert extended.row_vector({**given, "merchant_amount_avg_7d": 20.0})[-1] == 4.0


def test_declarations_read_only_what_is_declared_before_them():
    def reads_a_later_feature(amount_to_merchant_avg_7d: float | None) -> float | None:
        return amount_to_merchant_avg_7d

    def reads_nothing_known(amount_in_yen: float) -> float:
        return amount_in_yen

    def txn_hour(txn_hour: int) -> float:  # a request field's name
        return float(txn_hour)

    extra = rf.RequestFeature.of(amount_to_merchant_avg_7d)
    for features in (
        (*rf.FEATURES, rf.RequestFeature.of(reads_a_later_feature), extra),
        (*rf.FEATURES, rf.RequestFeature.of(reads_nothing_known)),
        (*rf.FEATURES, rf.RequestFeature.of(txn_hour)),
        (*rf.FEATURES, extra, extra),
    ):
        with pytest.raises(ValueError):
            rf.Declared(features)
    with pytest.raises(ValueError):
        rf.RequestFeature.of(amount_to_merchant_avg_7d, "String")  # vectors hold numbers


def _feature_repo(name: str):
    """feature_repo/features.py imported afresh, as `feast apply` imports it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "feature_repo" / "features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_added_feature_is_in_the_feast_on_demand_view(monkeypatch):
    pytest.importorskip("feast")
    extended = _extended()
    # The declarations as the module would hold them with the extra feature declared in it.
    monkeypatch.setattr(rf, "DECLARED", extended)
    monkeypatch.setattr(rf, "FEATURES", extended.features)
    monkeypatch.setattr(rf, "OUTPUT_FEATURES", extended.outputs)
    monkeypatch.setattr(rf, "STORED_INPUTS", extended.stored_inputs)
    monkeypatch.setattr(rf, "feast_columns", extended.feast_columns)
    odfv = _feature_repo("features_with_an_extra_request_feature").request_features

    assert [(f.name, str(f.dtype)) for f in odfv.features] == [
        (name, "Float64") for name in extended.outputs
    ]
    assert set(odfv.source_feature_view_projections) == {
        "card_stats",
        "merchant_stats",
        "device_stats",
        "fx_rates",
    }
    assert set(odfv.source_request_sources) == {"transaction_request"}
    odfv.infer_features()  # as `feast apply` does: the function's output agrees with the schema
    calls.clear()
    out = odfv.feature_transformation.udf({k: [v, v] for k, v in _row().items()})
    assert out[EXTRA] == [1.6, 1.6] and len(calls) == 2
    assert list(out) == list(extended.outputs)

    # Without it, the view is the declarations' own: no merchant view.
    monkeypatch.undo()
    plain = _feature_repo("features_as_declared").request_features
    assert [f.name for f in plain.features] == list(rf.OUTPUT_FEATURES)
    assert "merchant_stats" not in plain.source_feature_view_projections
