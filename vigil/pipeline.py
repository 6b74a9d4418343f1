"""Offline feature pipeline: raw transactions -> the offline tables behind Feast's feature views.

``feature_repo/features.py`` declares three feature views (``card_stats``, ``merchant_stats``,
``device_stats``) whose ``FileSource`` is a parquet file per view. This module writes those files.

What a row means (the contract that keeps training leak-free): for every transaction ``i`` of an
entity the pipeline emits one row stamped ``t_i + 1 µs`` describing the entity *after* ``i``: its
events with time in ``(t_i - w, t_i]`` for the view's longest window ``w`` (at most
``vigil_contracts.windows.EVENT_CAP``, the newest), oldest first, and its scalars (last
transaction, first sighting); for the tiled merchant view, its tiles instead (per level, the
sums of its events up to ``i`` in each tile from ``U(t_i) - units`` to ``U(t_i)``). Feast's point-in-time join picks the latest row with stamp
``<= t``, so a transaction at ``t`` only ever sees transactions strictly before ``t``; the
windows ("in the last hour") are then finished at ``t`` itself, over ``(t - w, t)``, by the
on-demand views (``vigil_contracts.windows``), in training and serving alike. Transactions of one
entity that share a timestamp give a single row (the state after all of them), so ``(entity,
event_timestamp)`` is unique.

Money is one currency: every amount is converted to EUR at the rate of its day (the world's FX
table, ``vigil.fx``) before it is stored; the FX table itself is written beside the tables as the
``fx_rates`` view's source. Night is local time (``vigil_contracts.local_time``).

Labels (``is_fraud``, ``fraud_mechanism``, ``chargeback_timestamp``) are never read.

How it scales: everything is vectorised numpy/pandas/arrow, roughly ``O(n log n)`` plus the size
of the lists, with no Python loop over entities or rows: rows of a table are sorted by
``(entity, time)``; each timestamp is replaced by its rank among all distinct timestamps, so
``entity * (n_times + 1) + rank`` is one sorted int64 key, and the start of every row's event
list is a single ``searchsorted`` on that key; the lists are gathered with one index array.

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
from tqdm.auto import tqdm

from vigil.fx import FX_FILE, Rates, read_fx_table
from vigil.fx import SCHEMA as FX_SCHEMA
from vigil.local_hours import local_hours
from vigil_contracts import request_features, windows
from vigil_contracts.money import BASE_CURRENCY

#: Columns of each offline table after its key and stamp: the view's stored features (each
#: entity's recent events, then its scalars), as ``vigil_contracts.windows`` declares them.
FEATURE_TABLES: dict[str, tuple[str, ...]] = {
    view: tuple(windows.stored_features(view)) for view in windows.VIEWS
}

#: The feature view (and offline table) of the FX table, keyed by currency.
FX_VIEW = "fx_rates"

#: Join key of each table (the feature view's entity join key).
ENTITY_KEYS: dict[str, str] = {
    "card_stats": "card_id",
    "merchant_stats": "merchant_id",
    "device_stats": "device_id",
}

#: Feast type name of every stored feature; the parquet type follows from it (see ARROW_TYPES).
FEATURE_TYPES: dict[str, str] = {
    name: dtype for view in windows.VIEWS for name, dtype in windows.stored_features(view).items()
}

ARROW_TYPES: dict[str, pa.DataType] = {
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "Array(Int64)": pa.list_(pa.int64()),
    "Array(Float64)": pa.list_(pa.float64()),
    "Array(String)": pa.list_(pa.string()),
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

ROW_DELAY_US = 1  # a row describes the state after t_i, so it becomes visible just after t_i
NIGHT_HOURS = request_features.NIGHT_HOURS  # local time, as the request feature ``is_night``

_N_STEPS = 7  # calls to step() in compute_feature_tables, for the progress bar


def _table_schema(table: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(ENTITY_KEYS[table], pa.string()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            *(pa.field(f, ARROW_TYPES[FEATURE_TYPES[f]]) for f in FEATURE_TABLES[table]),
        ]
    )


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

    def epoch_seconds(self, rows: np.ndarray) -> np.ndarray:
        return self.t[rows] / 1e6

    def group_first(self) -> np.ndarray:
        """Index of the first row of each output row's entity."""
        return np.searchsorted(self.g, self.g[self.last], side="left")

    def frame(
        self, table: str, scalars: dict[str, np.ndarray], events: dict[str, pa.Array]
    ) -> pd.DataFrame:
        """The output table: key, stamp, then the view's stored features in order (event lists
        as arrow-backed list columns, scalars as float64)."""
        stamps = (self.t[self.last] + ROW_DELAY_US).astype("datetime64[us]")
        columns: dict[str, object] = {
            ENTITY_KEYS[table]: np.asarray(self.uniques, dtype=object)[self.g[self.last]],
            "event_timestamp": pd.DatetimeIndex(stamps).tz_localize("UTC"),
        }
        for name in FEATURE_TABLES[table]:
            if name in events:
                columns[name] = pd.arrays.ArrowExtensionArray(events[name])
            else:
                columns[name] = np.asarray(scalars[name], dtype=np.float64)
        # copy=False also skips consolidating the columns into 2-D blocks, which at millions of
        # rows costs seconds and buys nothing here.
        return pd.DataFrame(columns, copy=False)


def _event_lists(tl: _Timeline, view: str, fields: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Each output row's recent events (``vigil_contracts.windows``): the entity's events with
    time in ``(t_i - w, t_i]`` for the view's longest window ``w``, at most ``EVENT_CAP`` (the
    newest), oldest first, as one arrow list array per event list. ``fields`` holds each event
    field (``amount``, ``card``, ...) in the input frame's row order."""
    end = tl.end
    start = np.maximum(tl.start(windows.longest_window_us(view))[tl.last], end - windows.EVENT_CAP)
    lengths = end - start
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    rows = np.repeat(start - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
    out: dict[str, pa.Array] = {}
    for name, (of, dtype) in windows.EVENT_FIELDS[view].items():
        values = tl.t[rows] if of == "us" else tl.take(fields[of])[rows]
        out[name] = _list_array(offsets, values, dtype)
    return out


def _list_array(offsets: np.ndarray, values: np.ndarray, dtype: str) -> pa.Array:
    return pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), pa.array(values, ARROW_TYPES[dtype])
    ).cast(pa.list_(ARROW_TYPES[dtype]))


def _tile_lists(tl: _Timeline, view: str, fields: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Each output row's tiles (``vigil_contracts.windows.TILES``), per level: the entity's
    tiles with index in ``[U(t_i) - units, U(t_i)]`` holding its events up to row ``i`` (ties
    included), oldest first, as one arrow list array per tile list."""
    n = len(tl)
    amount = tl.take(fields["amount"])
    per_event = {
        "count": np.ones(n, dtype=np.int64),
        "small": (amount < windows.SMALL_AMOUNT).astype(np.int64),
        "amount": amount,
        "night": tl.take(fields["night"]).astype(np.int64),
    }
    out: dict[str, pa.Array] = {}
    for level in windows.TILES[view]:
        index = tl.t // level.unit_us
        # Runs of one (entity, tile) in the (entity, time) order: the tiles.
        new = np.ones(n, dtype=bool)
        new[1:] = (tl.g[1:] != tl.g[:-1]) | (index[1:] != index[:-1])
        run_start = np.flatnonzero(new)
        run = np.cumsum(new) - 1
        run_last = np.append(run_start[1:], n) - 1
        rel = index - (index.min() if n else 0) + level.units  # a query's rel - units >= 0
        stride = np.int64(rel.max(initial=0) + 1)
        run_key = tl.g[run_start] * stride + rel[run_start]
        r = tl.last  # the output rows (each the last of its ties)
        first = np.searchsorted(run_key, tl.g[r] * stride + rel[r] - level.units, side="left")
        lengths = run[r] - first + 1
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        tile = np.repeat(first - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        own = np.repeat(r, lengths)
        # A row's own tile holds its events up to the row; an older tile is complete.
        at = np.where(tile == run[own], own, run_last[tile])
        for name, (what, dtype) in level.lists.items():
            if what == "index":
                values = index[at]
            else:
                values = _running_sums(per_event[what], run_start, run)[at]
            out[name] = _list_array(offsets, values, dtype)
    return out


def _running_sums(x: np.ndarray, run_start: np.ndarray, run: np.ndarray) -> np.ndarray:
    """Each element's inclusive cumulative sum within its run, added one element after the
    other (the order a streamer adds them in, so float sums are the same floats)."""
    if x.dtype.kind == "i":  # integers: exact either way
        total = np.cumsum(x)
        return total - (total[run_start] - x[run_start])[run]
    out = x.astype(np.float64, copy=True)
    position = np.arange(len(x)) - run_start[run]
    order = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[order], np.arange(1, int(position.max(initial=0)) + 2))
    for k in range(1, len(bounds)):
        at = order[bounds[k - 1] : bounds[k]]
        out[at] = out[at - 1] + x[at]
    return out


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
    *FEATURE_TABLES[name]]``; ``event_timestamp`` is ``datetime64[us, UTC]``, event lists are
    arrow-backed list columns, scalars float64. Rows are
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
        # Null ids get code -1: no row in their table.
        cards = pd.factorize(raw["card_id"])
        merchants = pd.factorize(raw["merchant_id"])
        devices = pd.factorize(raw["device_id"])

        # Event fields in the input's row order; text ids are "" where missing.
        fields: dict[str, np.ndarray] = {
            "amount": amount,
            "night": ((hour >= NIGHT_HOURS.start) & (hour < NIGHT_HOURS.stop)).astype(np.int64),
            **{
                of: np.asarray(raw[column].fillna(""), dtype=object).astype(str)
                for of, column in (
                    ("merchant", "merchant_id"),
                    ("device", "device_id"),
                    ("card", "card_id"),
                    ("country", "country"),
                )
            },
        }
        step("prepare")
        tables: dict[str, pd.DataFrame] = {}
        views = (("card_stats", cards), ("merchant_stats", merchants), ("device_stats", devices))
        for view, ids in views:  # a transaction without a device has no device_stats row
            tl = _Timeline(ids, clock)
            step(f"{view}: sort")
            scalars: dict[str, np.ndarray] = {}
            if "card_last_txn_epoch" in windows.STORED_SCALARS[view]:
                scalars["card_last_txn_epoch"] = tl.epoch_seconds(tl.last)
            if view in windows.FIRST_SEEN:
                scalars[windows.FIRST_SEEN[view]] = tl.epoch_seconds(tl.group_first())
            lists = _tile_lists if view in windows.TILES else _event_lists
            tables[view] = tl.frame(view, scalars, lists(tl, view, fields))
            step(f"{view}: events")

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
    # Without pandas' metadata: it would name the event lists' arrow-backed dtype, which pandas
    # then fails to read back; the arrow schema says everything.
    written = {
        name: pa.Table.from_pandas(
            frame, schema=_table_schema(name), preserve_index=False
        ).replace_schema_metadata(None)
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
