"""Offline feature pipeline: raw transactions -> the offline tables behind Feast's feature views.

``feature_repo/features.py`` declares three feature views (``card_stats``, ``merchant_stats``,
``device_stats``) whose ``FileSource`` is a parquet file per view. This module writes those files.

What a row means (the contract that keeps training leak-free): for every transaction ``i`` of an
entity the pipeline emits one row stamped ``t_i + 1 µs`` describing the entity *after* ``i``, i.e.
aggregates over the entity's transactions with timestamp in ``(t_i - w, t_i]``. Feast's
point-in-time join picks the latest row with stamp ``<= t``, so a transaction at ``t`` only ever
sees rows built from transactions strictly before ``t`` -- never itself, never a transaction at
the same instant. Transactions of one entity that share a timestamp give a single row (the state
after all of them), so ``(entity, event_timestamp)`` is unique.

Money is one currency: every amount is converted to EUR at the rate of its day (the world's FX
table, ``vigil.fx``) before it is summed, averaged or compared; the FX table itself is written
beside the tables as the ``fx_rates`` view's source. Hours are local time
(``vigil_contracts.local_time``).

Labels (``is_fraud``, ``fraud_mechanism``, ``chargeback_timestamp``) are never read.

How it scales: everything is vectorised numpy/pandas, roughly ``O(n log n)`` in total (a handful
of sorts and binary searches), with no Python loop over entities or rows:

* rows of a table are sorted by ``(entity, time)``; each timestamp is replaced by its rank among
  all distinct timestamps, so ``entity * (n_times + 1) + rank`` is one sorted int64 key, and the
  start of every row's window is a single ``searchsorted`` on that key;
* counts are differences of row indices, shares differences of integer prefix sums;
* sums / means / std / max run through pandas' rolling kernels with those explicit bounds;
* sliding distinct counts use the "coverage interval" trick of :func:`_distinct_in_window`;
* the sliding mode (``card_home_country``) is only computed where the window holds two or more
  countries, by scoring the card's few countries with binary searches.

Entry points: :func:`compute_feature_tables` (DataFrames in memory) and
:func:`write_feature_tables` (raw parquet in, one parquet per feature view out).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.indexers import BaseIndexer
from tqdm.auto import tqdm

from vigil.fx import FX_FILE, Rates, read_fx_table
from vigil.fx import SCHEMA as FX_SCHEMA
from vigil.local_hours import local_hours
from vigil_contracts import entity_rows, request_features
from vigil_contracts.money import BASE_CURRENCY

#: Feature columns of each offline table, in the order of the feature views in features.py, and
#: the Feast type of every feature (the parquet type follows from it, see ARROW_TYPES): declared
#: once in ``vigil_contracts.entity_rows``, which the streamer's rows are built from too.
FEATURE_TABLES: dict[str, tuple[str, ...]] = entity_rows.FEATURE_TABLES
FEATURE_TYPES: dict[str, str] = entity_rows.FEATURE_TYPES

#: The feature view (and offline table) of the FX table, keyed by currency.
FX_VIEW = "fx_rates"

#: Join key of each table (the feature view's entity join key).
ENTITY_KEYS: dict[str, str] = {
    "card_stats": "card_id",
    "merchant_stats": "merchant_id",
    "device_stats": "device_id",
}

ARROW_TYPES: dict[str, pa.DataType] = {
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "String": pa.string(),
}

#: Raw columns the features are built from. Nothing else (in particular no label) is read.
INPUT_COLUMNS: tuple[str, ...] = (
    "event_timestamp",
    "card_id",
    "merchant_id",
    "device_id",
    "country",
    "amount",
    "currency",
)

WINDOWS_US: dict[str, int] = entity_rows.WINDOWS_US
# Night is 00:00-05:59 local time (``vigil_contracts.local_time``), as in the request feature
# ``is_night``.
NIGHT_HOURS = request_features.NIGHT_HOURS
SMALL_AMOUNT = entity_rows.SMALL_AMOUNT
ROW_DELAY_US = entity_rows.ROW_DELAY_US

_NUMPY_DTYPES: dict[str, type] = {"Int64": np.int64, "Float64": np.float64, "String": object}

_N_STEPS = 20  # calls to step() in compute_feature_tables, for the progress bar

# Upper bound on (query, candidate country) pairs held at once by the sliding mode.
_MODE_CHUNK = 2_000_000


def _table_schema(table: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(ENTITY_KEYS[table], pa.string()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            *(pa.field(f, ARROW_TYPES[FEATURE_TYPES[f]]) for f in FEATURE_TABLES[table]),
        ]
    )


class _ExplicitBounds(BaseIndexer):
    """Rolling-window bounds given as arrays (pandas then runs its usual C kernels over them).

    The bounds are non-decreasing over the whole (entity, time)-sorted array and never cross an
    entity boundary, which is what pandas' incremental sum/var/max kernels need.
    """

    def __init__(self, start: np.ndarray, end: np.ndarray) -> None:
        super().__init__()
        self._start = start
        self._end = end

    def get_window_bounds(
        self,
        num_values: int = 0,
        min_periods: int | None = None,
        center: bool | None = None,
        closed: str | None = None,
        step: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._start, self._end


class _Clock:
    """The input's timestamps as integer µs, and their ranks among the distinct timestamps."""

    def __init__(self, t: np.ndarray) -> None:
        self.t = t
        self.times, inverse = np.unique(t, return_inverse=True)
        self.rank = inverse.reshape(-1).astype(np.int64) + 1  # 1-based: rank = #times <= t
        self._before: dict[int, np.ndarray] = {}

    def at_or_before(self, w_us: int) -> np.ndarray:
        """For each distinct time T (by rank - 1), how many distinct times are <= T - w.

        Searching the sorted distinct times (rather than each row's t - w in entity order)
        keeps the binary searches cache-friendly; it is shared by all tables.
        """
        if w_us not in self._before:
            self._before[w_us] = np.searchsorted(self.times, self.times - w_us, side="right")
        return self._before[w_us]


class _Timeline:
    """The rows of one entity table, sorted by (entity, time), plus window-bound helpers.

    Each row's time is replaced by its 1-based rank among the input's distinct timestamps, so
    ``entity * stride + rank`` is a sorted int64 key (no overflow: both factors are at most the
    row count) on which one ``searchsorted`` finds, for every row at once, where its window
    starts inside its own entity's rows.
    """

    def __init__(self, keys: tuple[np.ndarray, pd.Index], clock: _Clock):
        codes, self.uniques = keys  # pd.factorize output: null keys have code -1 and are dropped
        rows = np.flatnonzero(codes >= 0)
        self.clock = clock
        self.stride = np.int64(len(clock.times) + 1)
        key = codes[rows].astype(np.int64) * self.stride + clock.rank[rows]
        order = np.argsort(key, kind="stable")
        self.rows = rows[order]  # positions in the input frame
        self.key = key[order]
        self.g = codes[self.rows].astype(np.int64)
        self.t = clock.t[self.rows]
        self.rank = clock.rank[self.rows]
        # The last row of each (entity, timestamp) run is the one that sees all tied rows; the
        # table has one output row per run.
        n = len(self.key)
        is_last = np.ones(n, dtype=bool)
        if n > 1:
            is_last[:-1] = self.key[1:] != self.key[:-1]
        self.last = np.flatnonzero(is_last)
        self.end = self.last + 1  # exclusive window end of each output row
        self._starts: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.key)

    def take(self, values: np.ndarray) -> np.ndarray:
        """A column of the input frame in this table's sorted row order."""
        return values[self.rows]

    def start(self, w_us: int) -> np.ndarray:
        """For every row, the first row of its entity with time > t - w (window (t - w, t])."""
        if w_us not in self._starts:
            q = self.clock.at_or_before(w_us)[self.rank - 1]
            # Entity-major queries are non-decreasing, so this search walks memory in order.
            self._starts[w_us] = np.searchsorted(self.key, self.g * self.stride + q, side="right")
        return self._starts[w_us]

    def count(self, w_us: int) -> np.ndarray:
        return (self.end - self.start(w_us)[self.last]).astype(np.int64)

    def share(self, flags: np.ndarray, w_us: int) -> np.ndarray:
        """Share of rows in the window whose flag is set (exact: integer prefix sums)."""
        prefix = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
        lo = self.start(w_us)[self.last]
        return (prefix[self.end] - prefix[lo]) / (self.end - lo)

    def rolling(self, values: np.ndarray, w_us: int, how: str) -> np.ndarray:
        """pandas rolling ``how`` ("sum", "mean", "std", "max") over each output row's window."""
        bounds = _ExplicitBounds(self.start(w_us), np.arange(1, len(self) + 1, dtype=np.int64))
        roll = pd.Series(values, dtype=np.float64).rolling(bounds, min_periods=1)
        out = roll.std(ddof=0) if how == "std" else getattr(roll, how)()  # population std
        return out.to_numpy(dtype=np.float64)[self.last]

    def epoch_seconds(self, rows: np.ndarray) -> np.ndarray:
        return self.t[rows] / 1e6

    def group_first(self) -> np.ndarray:
        """Index of the first row of each output row's entity."""
        return np.searchsorted(self.g, self.g[self.last], side="left")

    def frame(self, table: str, features: dict[str, np.ndarray]) -> pd.DataFrame:
        """The output table: key, stamp, then the view's features in order, with their dtypes."""
        stamps = (self.t[self.last] + ROW_DELAY_US).astype("datetime64[us]")
        columns: dict[str, object] = {
            ENTITY_KEYS[table]: np.asarray(self.uniques, dtype=object)[self.g[self.last]],
            "event_timestamp": pd.DatetimeIndex(stamps).tz_localize("UTC"),
        }
        for name in FEATURE_TABLES[table]:
            columns[name] = np.asarray(features[name], dtype=_NUMPY_DTYPES[FEATURE_TYPES[name]])
        # copy=False also skips consolidating the columns into 2-D blocks, which at millions of
        # rows costs seconds and buys nothing here.
        return pd.DataFrame(columns, copy=False)


def _distinct_in_window(tl: _Timeline, codes: np.ndarray, w_us: int) -> np.ndarray:
    """Distinct non-null values of ``codes`` (sorted row order, -1 = null) in each window.

    An occurrence at time s keeps its value "in the window" of times T in [s, s + w). Merging the
    occurrences of one (entity, value) pair whose gaps are < w gives disjoint intervals
    [first, last + w); the distinct count at T is then (#intervals started at or before T) -
    (#intervals ended at or before T). An interval starts at its first row, and has ended by T
    exactly when its last row has time <= T - w, i.e. lies before the window start. Both are
    prefix sums of per-row flags; every entity's starts and ends balance, so global prefix sums
    need no per-entity reset.
    """
    n = len(tl)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    valid = np.flatnonzero(codes >= 0)
    n_codes = np.int64(codes.max() + 1) if valid.size else np.int64(1)
    pair = tl.g[valid] * n_codes + codes[valid]
    by_pair = np.argsort(pair, kind="stable")  # stable: keeps time order inside a pair
    order = valid[by_pair]
    pair = pair[by_pair]
    t = tl.t[order]
    starts_sorted = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        starts_sorted[1:] = (pair[1:] != pair[:-1]) | (t[1:] - t[:-1] >= w_us)
    ends_sorted = np.ones(len(order), dtype=bool)  # an interval ends right before the next starts
    ends_sorted[:-1] = starts_sorted[1:]
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    starts[order] = starts_sorted
    ends[order] = ends_sorted
    started = np.concatenate(([0], np.cumsum(starts)))
    ended = np.concatenate(([0], np.cumsum(ends)))
    return started[tl.end] - ended[tl.start(w_us)[tl.last]]


def _mode_in_window(
    tl: _Timeline, codes: np.ndarray, w_us: int, distinct: np.ndarray
) -> np.ndarray:
    """Most frequent code in each output row's window, ties -> smallest code (-1 if none).

    ``codes`` must be ordered like the values (factorized with ``sort=True``) so that "smallest
    code" means "lexicographically smallest value". ``distinct`` is the distinct count of the same
    codes over the same window.
    """
    result = np.full(len(tl.last), -1, dtype=np.int64)
    own = codes[tl.last]
    # With one distinct value in the window, it is the value of the row itself (always included).
    simple = (distinct == 1) & (own >= 0)
    result[simple] = own[simple]
    hard = np.flatnonzero(~simple & (distinct > 0))
    if hard.size == 0:
        return result

    # Candidates of a row are the (entity, code) pairs its entity ever used: few per card (at
    # most the ~250 country codes), and their windowed counts are binary searches over the
    # pair's occurrences keyed like the timeline (pair * stride + rank).
    valid = np.flatnonzero(codes >= 0)
    n_codes = np.int64(codes.max() + 1)
    pair = tl.g[valid] * n_codes + codes[valid]
    pairs = np.unique(pair)
    pair_entity = pairs // n_codes
    pair_code = pairs % n_codes
    occurrences = np.sort(np.searchsorted(pairs, pair) * tl.stride + tl.rank[valid])

    rows = tl.last[hard]
    first = np.searchsorted(pair_entity, tl.g[rows], side="left")
    k = np.searchsorted(pair_entity, tl.g[rows], side="right") - first
    hi = tl.rank[rows]  # times <= t
    lo = tl.clock.at_or_before(w_us)[tl.rank[rows] - 1]  # times <= t - w
    # Higher count wins; among equal counts the smaller code wins.
    scale = n_codes + 1

    k_cum = np.cumsum(k)
    s = 0
    while s < len(rows):  # chunks bound the memory of the (row, candidate) expansion
        done = k_cum[s - 1] if s else 0
        e = max(s + 1, int(np.searchsorted(k_cum, done + _MODE_CHUNK, side="right")))
        kk = k[s:e]
        offsets = np.cumsum(kk) - kk
        cand = np.repeat(first[s:e] - offsets, kk) + np.arange(int(kk.sum()), dtype=np.int64)
        base = cand * tl.stride
        n_in = np.searchsorted(occurrences, base + np.repeat(hi[s:e], kk), side="right")
        n_in -= np.searchsorted(occurrences, base + np.repeat(lo[s:e], kk), side="right")
        best = np.maximum.reduceat(n_in * scale + (n_codes - pair_code[cand]), offsets)
        result[hard[s:e]] = np.where(best >= scale, n_codes - best % scale, -1)
        s = e
    return result


def _prepare(transactions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in INPUT_COLUMNS if c not in transactions.columns]
    if missing:
        raise ValueError(f"raw transactions lack columns {missing}")
    raw = transactions.loc[:, list(INPUT_COLUMNS)]  # labels are dropped here, before anything
    if raw["event_timestamp"].isna().any():
        raise ValueError("raw transactions have null event_timestamp")
    return raw


def compute_feature_tables(
    transactions: pd.DataFrame | str | Path,
    progress: bool = False,
    fx_rates: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Build the three offline tables from raw transactions (a DataFrame or a parquet path).

    Amounts are converted to the base currency (EUR) at the rate of their UTC day from
    ``fx_rates`` (``vigil.fx``: currency, event_timestamp, eur_per_unit) before anything is
    summed or compared; without a table every amount must already be in EUR.

    Returns ``{table name: DataFrame}`` with columns ``[entity key, event_timestamp,
    *FEATURE_TABLES[name]]``; ``event_timestamp`` is ``datetime64[us, UTC]``, Int64 features are
    int64, Float64 features float64 and String features object (``None`` when missing). Rows are
    grouped by entity (in order of first appearance), each entity's rows by event_timestamp.
    ``progress`` shows a tqdm bar over the steps.
    """
    if not isinstance(transactions, pd.DataFrame):
        transactions = pd.read_parquet(transactions, columns=list(INPUT_COLUMNS))
    raw = _prepare(transactions)

    with tqdm(total=_N_STEPS, desc="feature tables", unit="step", disable=not progress) as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        # Integer microseconds (UTC) make the window arithmetic exact; naive stamps count as UTC.
        ts = pd.to_datetime(raw["event_timestamp"], utc=True).dt.as_unit("us")
        clock = _Clock(np.asarray(ts.array.asi8, dtype=np.int64))
        amount = in_base_currency(raw, np.asarray(ts.array.asi8, dtype=np.int64), fx_rates)
        hour = local_hours(ts, raw["country"])
        # Country codes follow sorted order, so "smallest code" is "lexicographically smallest".
        country_codes, countries = pd.factorize(raw["country"], sort=True)
        # Null ids get code -1: no row in their table, not counted by distinct counts.
        cards = pd.factorize(raw["card_id"])
        merchants = pd.factorize(raw["merchant_id"])
        devices = pd.factorize(raw["device_id"])
        card_codes, merchant_codes, device_codes = cards[0], merchants[0], devices[0]
        step("prepare")

        w1h, w24h, w7d, w30d = (WINDOWS_US[k] for k in ("1h", "24h", "7d", "30d"))
        tables: dict[str, pd.DataFrame] = {}

        # --- card_stats -----------------------------------------------------------------
        card = _Timeline(cards, clock)
        step("card: sort")
        c_amount = card.take(amount)
        c_country = card.take(country_codes).astype(np.int64)
        f: dict[str, np.ndarray] = {}
        f["card_txn_count_1h"] = card.count(w1h)
        f["card_txn_count_24h"] = card.count(w24h)
        f["card_txn_count_7d"] = card.count(w7d)
        step("card: counts")
        f["card_amount_sum_24h"] = card.rolling(c_amount, w24h, "sum")
        step("card: sum 24h")
        f["card_amount_avg_30d"] = card.rolling(c_amount, w30d, "mean")
        step("card: avg 30d")
        f["card_amount_std_30d"] = card.rolling(c_amount, w30d, "std")
        step("card: std 30d")
        f["card_amount_max_30d"] = card.rolling(c_amount, w30d, "max")
        step("card: max 30d")
        f["card_distinct_merchants_24h"] = _distinct_in_window(
            card, card.take(merchant_codes).astype(np.int64), w24h
        )
        step("card: distinct merchants")
        f["card_distinct_devices_30d"] = _distinct_in_window(
            card, card.take(device_codes).astype(np.int64), w30d
        )
        step("card: distinct devices")
        f["card_distinct_countries_30d"] = _distinct_in_window(card, c_country, w30d)
        step("card: distinct countries")
        f["card_last_txn_epoch"] = card.epoch_seconds(card.last)
        home = _mode_in_window(card, c_country, w30d, f["card_distinct_countries_30d"])
        home_country = np.full(len(home), None, dtype=object)
        known = home >= 0
        home_country[known] = np.asarray(countries, dtype=object)[home[known]]
        f["card_home_country"] = home_country
        step("card: home country")
        tables["card_stats"] = card.frame("card_stats", f)

        # --- merchant_stats -------------------------------------------------------------
        merchant = _Timeline(merchants, clock)
        step("merchant: sort")
        f = {}
        f["merchant_txn_count_24h"] = merchant.count(w24h)
        f["merchant_txn_count_7d"] = merchant.count(w7d)
        step("merchant: counts")
        f["merchant_amount_avg_7d"] = merchant.rolling(merchant.take(amount), w7d, "mean")
        step("merchant: avg 7d")
        f["merchant_distinct_cards_24h"] = _distinct_in_window(
            merchant, merchant.take(card_codes).astype(np.int64), w24h
        )
        step("merchant: distinct cards")
        m_hour = merchant.take(hour)
        night = (m_hour >= NIGHT_HOURS.start) & (m_hour < NIGHT_HOURS.stop)
        f["merchant_night_share_7d"] = merchant.share(night, w7d)
        f["merchant_small_amount_share_24h"] = merchant.share(
            merchant.take(amount) < SMALL_AMOUNT, w24h
        )
        step("merchant: shares")
        tables["merchant_stats"] = merchant.frame("merchant_stats", f)

        # --- device_stats (transactions without a device have no row here) -----------------
        device = _Timeline(devices, clock)
        step("device: sort")
        f = {}
        f["device_txn_count_24h"] = device.count(w24h)
        f["device_distinct_cards_7d"] = _distinct_in_window(
            device, device.take(card_codes).astype(np.int64), w7d
        )
        step("device: distinct cards")
        f["device_distinct_countries_7d"] = _distinct_in_window(
            device, device.take(country_codes).astype(np.int64), w7d
        )
        step("device: distinct countries")
        f["device_first_seen_epoch"] = device.epoch_seconds(device.group_first())
        step("device: first seen")
        tables["device_stats"] = device.frame("device_stats", f)

    return tables


def in_base_currency(
    raw: pd.DataFrame, ts_us: np.ndarray, fx_rates: pd.DataFrame | None
) -> np.ndarray:
    """Each raw amount in EUR, at the rate of its currency on its UTC day."""
    amount = raw["amount"].to_numpy(dtype=np.float64)
    currency = raw["currency"].astype(str).to_numpy()
    if fx_rates is None:
        foreign = sorted(set(currency) - {BASE_CURRENCY})
        if foreign:
            raise ValueError(
                f"amounts in {foreign} need an FX table to be compared in {BASE_CURRENCY}"
            )
        return amount
    rate = Rates(fx_rates).eur_per_unit(currency, ts_us)
    if np.isnan(rate).any():
        missing = sorted(set(currency[np.isnan(rate)]))
        raise ValueError(f"the FX table has no rate for {missing} on some transactions' days")
    return amount * rate


def write_feature_tables(raw_path: Path, out_dir: Path, progress: bool = False) -> dict[str, Path]:
    """Compute the offline tables from the raw parquet at ``raw_path`` into ``out_dir``.

    Writes ``<table>.parquet`` for each table of :data:`FEATURE_TABLES` (the paths the feature
    views' FileSources point at when ``out_dir`` is ``feature_repo/data/offline``) with an
    explicit arrow schema: string key, ``timestamp[us, tz=UTC]`` event_timestamp, int64 / float64
    / string features. Each file is written to a temporary name and renamed, so a concurrent
    reader never sees half a file. Returns ``{table name: path}``.
    """
    raw_path = Path(raw_path)
    out_dir = Path(out_dir)
    # Only the feature inputs are read: the labels never even reach memory.
    raw = pd.read_parquet(raw_path, columns=list(INPUT_COLUMNS))
    fx_path = raw_path.parent / FX_FILE
    if not fx_path.is_file():
        raise FileNotFoundError(
            f"{fx_path} is missing: the world ships its FX table beside its transactions"
        )
    fx = read_fx_table(fx_path)
    tables = compute_feature_tables(raw, progress=progress, fx_rates=fx)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        name: pa.Table.from_pandas(frame, schema=_table_schema(name), preserve_index=False)
        for name, frame in tables.items()
    }
    # The FX table is served as it is (the fx_rates view): a row per currency and day.
    written[FX_VIEW] = pa.Table.from_pandas(fx, schema=FX_SCHEMA, preserve_index=False)
    paths: dict[str, Path] = {}
    for name, table in written.items():
        path = out_dir / f"{name}.parquet"
        tmp = out_dir / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        paths[name] = path
    return paths
