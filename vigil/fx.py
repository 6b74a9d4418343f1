"""The world's dated FX table: how many EUR (the base currency) one unit of each currency is
worth, one rate a day.

The world generates amounts in EUR and pays them in the currency of the country where the card
is used, converted at the rate of the day; the feature pipeline converts them back with the same
table, and Feast serves it as the ``fx_rates`` view (a row per currency, stamped 00:00 UTC of its
day), which the request-time transform reads. Rates follow a seeded random walk around rough
real-world levels, so the table is a pure function of the world's seed and window.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vigil_contracts.money import BASE_CURRENCY

#: The file beside the world's transactions.
FX_FILE = "fx_rates.parquet"
#: EUR per unit around which each currency's rate walks.
LEVELS: dict[str, float] = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CAD": 0.67, "CHF": 1.06}
_DAILY_SIGMA = 0.004  # ~0.4 % a day, the order of major pairs' daily moves
_US_PER_DAY = 86_400_000_000

SCHEMA = pa.schema(
    [
        pa.field("currency", pa.string()),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("eur_per_unit", pa.float64()),
    ]
)


def fx_table(
    seed: int, start: datetime, end: datetime, currencies: tuple[str, ...] = tuple(LEVELS)
) -> pd.DataFrame:
    """One row per currency and UTC day from ``start``'s day through ``end``'s day (inclusive:
    a day's transactions and a scoring request on ``end``'s day both find their rate)."""
    first = pd.Timestamp(start).tz_convert("UTC").floor("D")
    days = pd.date_range(first, pd.Timestamp(end).tz_convert("UTC").floor("D"), freq="D")
    rng = np.random.default_rng([seed, 4217])
    frames = []
    for currency in currencies:
        steps = rng.normal(0.0, _DAILY_SIGMA, len(days))
        walk = np.exp(np.cumsum(steps) - steps[0])
        rate = np.ones(len(days)) if currency == BASE_CURRENCY else LEVELS[currency] * walk
        frames.append(
            pd.DataFrame(
                {"currency": currency, "event_timestamp": days, "eur_per_unit": np.round(rate, 6)}
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["event_timestamp"] = table["event_timestamp"].dt.as_unit("us")
    return table


def write_fx_table(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(table, schema=SCHEMA, preserve_index=False), path)
    return path


def read_fx_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


class Rates:
    """The table as a lookup: the rate of each (currency, UTC day) of many transactions."""

    def __init__(self, table: pd.DataFrame) -> None:
        ts_us = pd.to_datetime(table["event_timestamp"], utc=True).dt.as_unit("us").astype("int64")
        days = (ts_us // _US_PER_DAY).to_numpy()
        self.first_day = int(days.min())
        n_days = int(days.max()) - self.first_day + 1
        self.currencies = sorted(table["currency"].unique())
        self.index = {c: i for i, c in enumerate(self.currencies)}
        self.grid = np.full((len(self.currencies), n_days), np.nan)
        day = days - self.first_day
        cur = table["currency"].map(self.index).to_numpy()
        self.grid[cur, day] = table["eur_per_unit"].to_numpy(dtype=np.float64)

    def eur_per_unit(self, currencies: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
        """The rate of each row's currency on its UTC day; NaN where the table has none."""
        cur = (
            pd.Series(currencies, dtype=object).map(self.index).fillna(-1).to_numpy(dtype=np.int64)
        )
        day = ts_us // _US_PER_DAY - self.first_day
        ok = (cur >= 0) & (day >= 0) & (day < self.grid.shape[1])
        out = np.full(len(cur), np.nan)
        out[ok] = self.grid[cur[ok], day[ok]]
        return out
