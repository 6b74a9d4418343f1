"""The seeded synthetic payments world that Vigil trains and evaluates on.

:func:`generate_world` writes one parquet file of card transactions over ``n_days`` days: legit
behaviour of cards, merchants and devices, plus four labelled fraud mechanisms (card testing,
account takeover, compromised merchants, odd-hours fraud) whose signals overlap with legit
behaviour on purpose, so that a model has something to learn and cannot win on one column.
``docs/fraud_mechanisms.md`` describes the world and the mechanisms.

The output is a pure function of :class:`WorldConfig`: every random draw comes from generators
derived from ``config.seed``, and the only use of the wall clock is the default ``end``. The
file is written chunk by chunk (a chunk is one day, or an equal slice of a day for very large
worlds), about one row group per chunk, so memory holds the per-entity state plus a chunk or
two, whatever ``n_transactions`` is.

Behaviour is generated in local time (people sleep at night where they are; odd-hours fraud
strikes at the local small hours): each transaction's wall-clock time is turned into its
instant by the time zone of its country (``vigil_contracts.local_time``, the rule serving
uses), so the file holds UTC instants, sorted. A row whose instant falls outside the window
(a local time near its edges) is not written.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from vigil.fx import FX_FILE, Rates, fx_table, write_fx_table
from vigil_contracts.local_time import COUNTRY_TIME_ZONES
from vigil_contracts.money import minor_units

__all__ = [
    "CHANNELS",
    "COUNTRIES",
    "CURRENCY_BY_COUNTRY",
    "MECHANISMS",
    "TRANSACTION_SCHEMA",
    "WorldConfig",
    "WorldSummary",
    "generate_world",
    "load_transactions",
]

_TS = pa.timestamp("us", tz="UTC")

#: The columns of the transactions file, in order.
TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("event_timestamp", _TS, nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("ip_address", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("is_fraud", pa.int8(), nullable=False),
        pa.field("fraud_mechanism", pa.string(), nullable=False),
        pa.field("chargeback_timestamp", _TS),
    ]
)

COUNTRIES: tuple[str, ...] = ("FR", "DE", "ES", "IT", "NL", "IE", "GB", "US", "CA", "CH")
CURRENCY_BY_COUNTRY: dict[str, str] = {
    "FR": "EUR",
    "DE": "EUR",
    "ES": "EUR",
    "IT": "EUR",
    "NL": "EUR",
    "IE": "EUR",
    "GB": "GBP",
    "US": "USD",
    "CA": "CAD",
    "CH": "CHF",
}
CHANNELS: tuple[str, ...] = ("pos", "ecom", "mobile")
MECHANISMS: tuple[str, ...] = (
    "card_testing",
    "account_takeover",
    "compromised_merchant",
    "odd_hours",
)

# Where cards live, where cardholders travel to, and where fraudsters (or their proxies) appear
# to be. The three differ so that "foreign" is a signal, but a weak one: legit travellers are
# foreign too, and some fraud comes from the card's own country.
_HOME_W = np.array([0.22, 0.15, 0.08, 0.08, 0.05, 0.03, 0.15, 0.16, 0.04, 0.04])
_TRAVEL_W = np.array([0.16, 0.10, 0.20, 0.17, 0.05, 0.04, 0.10, 0.10, 0.03, 0.05])
_FRAUD_W = np.array([0.06, 0.10, 0.08, 0.08, 0.16, 0.07, 0.16, 0.20, 0.05, 0.04])
_N_COUNTRIES = len(COUNTRIES)

# Each country owns a few first octets so an IP address geolocates to its country; the ranges
# stay clear of 0, 10, 127 and the multicast block.
_IP_OCTETS = (11 + 7 * np.arange(_N_COUNTRIES)[:, None] + np.arange(6)[None, :]).astype(np.uint32)

# Hourly activity weights by local hour (see the module docstring). Most cardholders
# sleep; "night owls" (night workers, insomniacs) give legit traffic at the hours odd-hours fraud
# uses, which is what keeps the hour of day from being a giveaway.
_PROFILE_NORMAL = np.array(
    [
        0.9,
        0.5,
        0.3,
        0.25,
        0.3,
        0.6,
        1.5,
        3.0,
        4.5,
        5.5,
        6.0,
        6.5,
        7.5,
        7.0,
        6.3,
        6.0,
        6.3,
        7.0,
        7.5,
        7.0,
        6.0,
        4.5,
        3.0,
        1.8,
    ]
)
_PROFILE_OWL = np.array(
    [
        4.0,
        3.5,
        3.0,
        2.5,
        2.0,
        1.5,
        1.0,
        1.0,
        1.5,
        2.0,
        2.5,
        3.0,
        3.5,
        3.5,
        3.5,
        3.5,
        4.0,
        4.5,
        5.0,
        5.5,
        6.0,
        6.0,
        5.5,
        5.0,
    ]
)
# Monday..Sunday volume multipliers.
_WEEKDAY_FACTOR = np.array([0.97, 0.97, 1.0, 1.02, 1.10, 1.15, 0.80])

_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000
_US_PER_MIN = 60_000_000
_US_PER_S = 1_000_000

_KIND_POS, _KIND_ONLINE, _KIND_OMNI = 0, 1, 2
_CH_POS, _CH_ECOM, _CH_MOBILE = 0, 1, 2
_NULL_DEVICE = -1

# Legit behaviour knobs that are not worth a config field. Several exist only to overlap with a
# fraud mechanism (named in the comment), so that no single column separates fraud from legit.
_P_FAV_POS = 0.65  # pos purchase at one of the card's 3 usual shops
_P_FAV_ONLINE = 0.55  # online purchase at one of the card's 2 usual sites
_P_ONE_OFF_DEVICE = 0.015  # legit purchase from a borrowed/new browser: overlaps ATO, testing
_P_SMALL = 0.04  # coffee, parking, app store: overlaps card testing
_P_LARGE = 0.01  # the occasional big purchase: overlaps ATO and compromised merchants
_P_ROAM_ONLINE = 0.85  # online purchase abroad geolocates abroad (else home VPN / roaming)
_TXN_SIGMA = 0.55  # spread of one card's amounts around its typical amount
_COMPROMISE_ROWS_PER_WINDOW = 120


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world; the same config always gives the same file."""

    seed: int = 7
    n_transactions: int = 200_000
    """Approximate row count (legit rows are Poisson draws, fraud rows are planned exactly)."""
    n_days: int = 120
    """Long enough for a 7-day warm-up, a ~6-week label wait and 10-week train/validation/test."""
    end: datetime | None = None
    """Exclusive end, tz-aware, at 00:00 UTC; None means today's 00:00 UTC."""
    fraud_rate: float = 0.012
    n_cards: int | None = None
    """None: one card per 40 transactions (about 0.7 transactions per card per day over 8 weeks)."""
    n_merchants: int | None = None
    """None: one merchant per 400 transactions; never fewer than 40 (4 shops per country)."""
    mechanism_mix: tuple[float, float, float, float] = (0.35, 0.25, 0.20, 0.20)
    """Share of fraud rows per mechanism, in the order of :data:`MECHANISMS`."""
    night_owl_share: float = 0.07
    travel_rate: float = 1 / 150
    """Daily probability that a card at home starts a 2-10 day trip abroad."""
    device_change_rate: float = 1 / 250
    """Daily probability that a card replaces one of its devices (a new phone or laptop)."""
    max_chunk_rows: int = 500_000
    """Above this many expected rows a day, days are cut into equal slices (one row group each)."""

    def __post_init__(self) -> None:
        if not 0.005 <= self.fraud_rate <= 0.02:
            raise ValueError(f"fraud_rate must lie in [0.005, 0.02], got {self.fraud_rate}")
        if self.n_transactions < 1_000:
            raise ValueError("n_transactions must be at least 1000")
        if self.n_days < 1:
            raise ValueError("n_days must be at least 1")
        if len(self.mechanism_mix) != len(MECHANISMS) or min(self.mechanism_mix) <= 0:
            raise ValueError("mechanism_mix needs one positive share per mechanism")
        if self.n_cards is not None and self.n_cards < 10:
            raise ValueError("n_cards must be at least 10")
        if not 0.0 <= self.night_owl_share <= 1.0:
            raise ValueError("night_owl_share must lie in [0, 1]")
        if self.max_chunk_rows < 1:
            raise ValueError("max_chunk_rows must be positive")
        if self.end is not None:
            _check_end(self.end)

    @property
    def cards(self) -> int:
        return self.n_cards if self.n_cards is not None else max(100, self.n_transactions // 40)

    @property
    def merchants(self) -> int:
        n = self.n_merchants if self.n_merchants is not None else self.n_transactions // 400
        # Every country needs a couple of shops for travellers to pay at.
        return max(n, 4 * _N_COUNTRIES)

    def resolved_end(self) -> datetime:
        if self.end is not None:
            return self.end.astimezone(UTC)
        now = datetime.now(UTC)
        return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class WorldSummary:
    """What :func:`generate_world` wrote."""

    path: Path
    n_transactions: int
    n_fraud: int
    fraud_rate: float
    start: datetime
    end: datetime
    by_mechanism: dict[str, int] = field(default_factory=dict)
    n_cards: int = 0
    n_merchants: int = 0
    n_row_groups: int = 0
    fx_path: Path | None = None
    """The dated FX table the amounts were converted with (beside the transactions)."""


def _check_end(end: datetime) -> None:
    if end.tzinfo is None or end.utcoffset() is None:
        raise ValueError("end must be timezone-aware (UTC)")
    utc = end.astimezone(UTC)
    # Day chunks and the diurnal profile are aligned on UTC midnight.
    if (utc.hour, utc.minute, utc.second, utc.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"end must be at 00:00 UTC, got {utc.isoformat()}")


def _cumulative(weights: np.ndarray) -> np.ndarray:
    cum = np.cumsum(weights, dtype=np.float64)
    cum /= cum[-1]
    # Exactly 1.0 so that searchsorted on a draw in [0, 1) never runs off the end.
    cum[-1] = 1.0
    return cum


def _log_uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), n))


class _Pool:
    """Merchants to draw from, weighted by popularity."""

    def __init__(self, members: np.ndarray, weights: np.ndarray) -> None:
        self.members = members.astype(np.int64)
        self.probs = weights / weights.sum()
        self.cum = _cumulative(weights)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.members[np.searchsorted(self.cum, rng.random(n), side="right")]


class _Profile:
    """A piecewise-constant density over the hours of a day, sampled by inverting its CDF."""

    def __init__(self, hourly: np.ndarray) -> None:
        self.cdf = np.concatenate([[0.0], _cumulative(hourly)])
        self.hours = np.arange(25, dtype=np.float64)

    def mass(self, a_us: int, b_us: int) -> float:
        fa, fb = np.interp([a_us / _US_PER_HOUR, b_us / _US_PER_HOUR], self.hours, self.cdf)
        return float(fb - fa)

    def sample(self, rng: np.random.Generator, a_us: int, b_us: int, n: int) -> np.ndarray:
        fa, fb = np.interp([a_us / _US_PER_HOUR, b_us / _US_PER_HOUR], self.hours, self.cdf)
        h = np.interp(fa + rng.random(n) * (fb - fa), self.cdf, self.hours)
        return np.clip((h * _US_PER_HOUR).astype(np.int64), a_us, b_us - 1)


_PROFILES = (_Profile(_PROFILE_NORMAL), _Profile(_PROFILE_OWL))


@dataclass
class _Rows:
    """Transactions of one chunk as integer codes, before they become strings."""

    card: np.ndarray
    t: np.ndarray  # microseconds since the start of the day
    merchant: np.ndarray
    device: np.ndarray  # device counter, _NULL_DEVICE for pos
    ip: np.ndarray  # uint32, meaningless where device is null
    country: np.ndarray
    channel: np.ndarray
    amount: np.ndarray
    mechanism: np.ndarray  # 0 legit, 1 + index in MECHANISMS
    event: np.ndarray  # fraud event id within the day, -1 for legit

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _Rows.__dataclass_fields__)
        )

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[idx] for f in _Rows.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.card)


@dataclass
class _Plan:
    """Fraud events of one mechanism, sorted by day."""

    day: np.ndarray
    size: np.ndarray
    extra: np.ndarray  # card testing: 1 if a larger purchase follows the burst

    def for_day(self, d: int) -> slice:
        lo, hi = np.searchsorted(self.day, [d, d + 1])
        return slice(int(lo), int(hi))


@dataclass
class _Window:
    """A merchant's compromise window and the fraud rows planned on each of its days."""

    merchant: int
    first_day: int
    rows_per_day: np.ndarray
    ring_devices: np.ndarray
    ring_ips: np.ndarray
    ring_country: int


class _World:
    """Per-entity state and the generators of legit and fraud rows."""

    def __init__(self, config: WorldConfig, start: datetime) -> None:
        self.cfg = config
        self.start = start
        root = np.random.SeedSequence(config.seed)
        setup_ss, plan_ss, days_ss = root.spawn(3)
        self.day_seeds = days_ss.spawn(config.n_days)
        self.next_device = 0
        self._setup(np.random.default_rng(setup_ss))
        self._plan(np.random.default_rng(plan_ss))

    # ----------------------------------------------------------------------------- entities
    def _new_devices(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_device, self.next_device + n, dtype=np.int64)
        self.next_device += n
        return ids

    @staticmethod
    def _random_ips(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
        n = len(country)
        first = _IP_OCTETS[country, rng.integers(0, _IP_OCTETS.shape[1], n)]
        middle = rng.integers(0, 1 << 16, n, dtype=np.uint32)
        last = rng.integers(1, 255, n, dtype=np.uint32)
        return (first << 24) | (middle << 8) | last

    @staticmethod
    def _foreign(rng: np.random.Generator, home: np.ndarray, weights: np.ndarray) -> np.ndarray:
        dest = np.searchsorted(_cumulative(weights), rng.random(len(home)), side="right")
        clash = dest == home
        dest[clash] = (home[clash] + rng.integers(1, _N_COUNTRIES, int(clash.sum()))) % _N_COUNTRIES
        return dest

    def _setup(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        nc, nm = cfg.cards, cfg.merchants

        # Merchants: the first 4 per country are shops so that every country can be visited.
        m_country = np.searchsorted(_cumulative(_HOME_W), rng.random(nm), side="right")
        m_kind = rng.choice(3, nm, p=[0.55, 0.30, 0.15])
        seeded = 4 * _N_COUNTRIES
        m_country[:seeded] = np.arange(seeded) % _N_COUNTRIES
        m_kind[:seeded] = np.where(np.arange(seeded) < 2 * _N_COUNTRIES, _KIND_POS, _KIND_OMNI)
        self.m_country = m_country
        self.m_kind = m_kind
        self.m_weight = rng.lognormal(0.0, 1.2, nm)
        self.m_factor = rng.lognormal(0.0, 0.45, nm)
        pos_ok = m_kind != _KIND_ONLINE
        online_ok = m_kind != _KIND_POS
        self.pos_pools = [
            _Pool(
                np.flatnonzero(pos_ok & (m_country == c)), self.m_weight[pos_ok & (m_country == c)]
            )
            for c in range(_N_COUNTRIES)
        ]
        self.online_pool = _Pool(np.flatnonzero(online_ok), self.m_weight[online_ok])
        # Card testers favour a handful of sites with weak checks (donations, digital goods);
        # those sites keep their ordinary legit traffic, small payments included.
        online = np.flatnonzero(online_ok)
        n_targets = max(2, len(online) // 8)
        targets = rng.choice(online, n_targets, replace=False)
        self.tester_pool = _Pool(targets, np.ones(n_targets))

        # Cards.
        self.home = np.searchsorted(_cumulative(_HOME_W), rng.random(nc), side="right")
        self.typical = rng.lognormal(math.log(30.0), 0.6, nc)
        self.activity = rng.gamma(1.3, 1 / 1.3, nc)
        self.profile = (rng.random(nc) < cfg.night_owl_share).astype(np.int8)
        mix = rng.dirichlet([3.3, 1.8, 0.9], nc)
        self.channel_cum = np.cumsum(mix, axis=1)[:, :2]
        self.n_dev = rng.choice([1, 2, 3], nc, p=[0.35, 0.45, 0.20]).astype(np.int64)
        self.dev = np.full((nc, 3), _NULL_DEVICE, dtype=np.int64)
        owned = np.arange(3)[None, :] < self.n_dev[:, None]
        self.dev[owned] = self._new_devices(int(owned.sum()))
        self.dev_ip = np.zeros((nc, 3), dtype=np.uint32)
        owner_home = np.broadcast_to(self.home[:, None], (nc, 3))[owned]
        self.dev_ip[owned] = self._random_ips(rng, owner_home)
        # Whether a device has shown up in a transaction yet; odd-hours fraud needs a device
        # that the card's history already knows.
        self.dev_seen = np.zeros((nc, 3), dtype=bool)
        self.fav_pos = np.empty((nc, 3), dtype=np.int64)
        for c in range(_N_COUNTRIES):
            rows = np.flatnonzero(self.home == c)
            self.fav_pos[rows] = self.pos_pools[c].sample(rng, 3 * len(rows)).reshape(-1, 3)
        self.fav_online = self.online_pool.sample(rng, 2 * nc).reshape(nc, 2)
        self.trip_country = np.full(nc, -1, dtype=np.int64)
        self.trip_end = np.zeros(nc, dtype=np.int64)
        order = np.argsort(self.home, kind="stable")
        self.cards_by_home = order
        self.home_offsets = np.searchsorted(self.home[order], np.arange(_N_COUNTRIES + 1))

        # Expected legit rows per card per day (before the weekday factor).
        self.day_factor = _WEEKDAY_FACTOR[(self.start.weekday() + np.arange(cfg.n_days)) % 7]
        n_legit = cfg.n_transactions * (1 - cfg.fraud_rate)
        base = n_legit / self.day_factor.sum() / nc
        self.lam = base * self.activity / self.activity.mean()

        # Times a merchant's factor, this is its mean legit amount: the yardstick for the
        # "higher than usual" amounts at a compromised merchant.
        self.mean_typical = float(self.typical.mean()) * math.exp(_TXN_SIGMA**2 / 2)

    def _merchant_daily_volume(self) -> np.ndarray:
        """Expected legit rows per day per merchant, from favourites and pool weights."""
        nm = self.cfg.merchants
        p_pos = self.channel_cum[:, 0]
        lam = self.lam * self.day_factor.mean()
        vol = np.zeros(nm)
        for s in range(3):
            np.add.at(vol, self.fav_pos[:, s], lam * p_pos * _P_FAV_POS / 3)
        for s in range(2):
            np.add.at(vol, self.fav_online[:, s], lam * (1 - p_pos) * _P_FAV_ONLINE / 2)
        for c in range(_N_COUNTRIES):
            at_home = self.home == c
            pool = self.pos_pools[c]
            vol[pool.members] += (lam * p_pos)[at_home].sum() * (1 - _P_FAV_POS) * pool.probs
        pool = self.online_pool
        vol[pool.members] += (lam * (1 - p_pos)).sum() * (1 - _P_FAV_ONLINE) * pool.probs
        return vol

    # ----------------------------------------------------------------------------- fraud plan
    def _plan(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        mix = np.asarray(cfg.mechanism_mix, dtype=np.float64)
        budget = cfg.n_transactions * cfg.fraud_rate * mix / mix.sum()

        def events(target: float, sizes: np.ndarray, extra: np.ndarray) -> _Plan:
            # Keep the prefix of events whose total size is closest to the target, so the
            # fraud rate hits its target even in a small world.
            total = np.cumsum(sizes)
            k = max(1, int(np.argmin(np.abs(total - target))) + 1)
            day = rng.integers(0, cfg.n_days, k)
            order = np.argsort(day, kind="stable")
            return _Plan(day[order], sizes[:k][order], extra[:k][order])

        n = int(budget[0] / 5) + 2
        burst = rng.integers(5, 31, n)
        follow = (rng.random(n) < 0.35).astype(np.int64)
        self.plan_testing = events(budget[0], burst + follow, follow)

        n = int(budget[1]) + 2
        size = np.where(rng.random(n) < 0.55, 1, rng.integers(2, 6, n))
        self.plan_ato = events(budget[1], size, np.zeros(n, dtype=np.int64))

        n = int(budget[3]) + 2
        size = np.where(rng.random(n) < 0.7, 1, rng.integers(2, 4, n))
        self.plan_odd = events(budget[3], size, np.zeros(n, dtype=np.int64))

        self.windows = self._plan_windows(rng, round(budget[2]))

    def _plan_windows(self, rng: np.random.Generator, rows: int) -> list[_Window]:
        cfg = self.cfg
        n_windows = max(1, round(rows / _COMPROMISE_ROWS_PER_WINDOW))
        edges = np.linspace(0, max(rows, n_windows), n_windows + 1).round()
        per_window = np.diff(edges).astype(np.int64)
        volume = self._merchant_daily_volume()
        taken = np.zeros(cfg.merchants, dtype=bool)
        windows = []
        for rows_w in per_window:
            length = min(cfg.n_days, int(rng.integers(2, 8)))
            first = int(rng.integers(0, cfg.n_days - length + 1))
            # Pick the merchant whose legit volume makes the fraud 20-50 % of its traffic.
            share = rng.uniform(0.2, 0.5)
            wanted = rows_w / length * (1 - share) / share
            gap = np.abs(np.log(np.maximum(volume, 1e-6)) - math.log(max(wanted, 1e-6)))
            gap[taken] = np.inf
            merchant = int(np.argmin(gap))
            taken[merchant] = True
            ring_country = int(np.searchsorted(_cumulative(_FRAUD_W), rng.random(), side="right"))
            ring = self._new_devices(int(rng.integers(2, 7)))
            windows.append(
                _Window(
                    merchant=merchant,
                    first_day=first,
                    rows_per_day=rng.multinomial(rows_w, np.full(length, 1 / length)),
                    ring_devices=ring,
                    ring_ips=self._random_ips(rng, np.full(len(ring), ring_country)),
                    ring_country=ring_country,
                )
            )
        return windows

    # ----------------------------------------------------------------------------- daily state
    def advance(self, rng: np.random.Generator, d: int) -> None:
        """Trips start and end, devices get replaced or added: legit novelty."""
        cfg = self.cfg
        nc = cfg.cards
        self.trip_country[self.trip_end <= d] = -1
        leave = (self.trip_country < 0) & (rng.random(nc) < cfg.travel_rate)
        idx = np.flatnonzero(leave)
        self.trip_country[idx] = self._foreign(rng, self.home[idx], _TRAVEL_W)
        self.trip_end[idx] = d + rng.integers(2, 11, len(idx))

        idx = np.flatnonzero(rng.random(nc) < cfg.device_change_rate)
        slot = (rng.random(len(idx)) * self.n_dev[idx]).astype(np.int64)
        self.dev[idx, slot] = self._new_devices(len(idx))
        self.dev_ip[idx, slot] = self._random_ips(rng, self.home[idx])
        self.dev_seen[idx, slot] = False

        idx = np.flatnonzero((self.n_dev < 3) & (rng.random(nc) < cfg.device_change_rate / 2))
        slot = self.n_dev[idx]
        self.dev[idx, slot] = self._new_devices(len(idx))
        self.dev_ip[idx, slot] = self._random_ips(rng, self.home[idx])
        self.n_dev[idx] += 1

    # ----------------------------------------------------------------------------- legit rows
    def legit(self, rng: np.random.Generator, d: int, a_us: int, b_us: int) -> _Rows:
        mass = np.array([p.mass(a_us, b_us) for p in _PROFILES])
        counts = rng.poisson(self.lam * self.day_factor[d] * mass[self.profile])
        card = np.repeat(np.arange(self.cfg.cards, dtype=np.int64), counts)
        n = len(card)

        t = np.empty(n, dtype=np.int64)
        prof = self.profile[card]
        for p, profile in enumerate(_PROFILES):
            sel = prof == p
            t[sel] = profile.sample(rng, a_us, b_us, int(sel.sum()))

        u = rng.random(n)
        cum = self.channel_cum[card]
        channel = (u >= cum[:, 0]).astype(np.int8) + (u >= cum[:, 1])
        pos = channel == _CH_POS

        home = self.home[card]
        trip = self.trip_country[card]
        roam = (trip >= 0) & (pos | (rng.random(n) < _P_ROAM_ONLINE))
        country = np.where(roam, trip, home)
        away = country != home

        any_slot = (rng.random(n) * self.n_dev[card]).astype(np.int64)
        slot = np.where(channel == _CH_MOBILE, 0, any_slot)
        device = self.dev[card, slot]
        ip = self.dev_ip[card, slot]
        one_off = ~pos & (rng.random(n) < _P_ONE_OFF_DEVICE)
        own = ~pos & ~one_off
        self.dev_seen[card[own], slot[own]] = True
        device[one_off] = self._new_devices(int(one_off.sum()))
        fresh_ip = ~pos & (one_off | away)
        ip[fresh_ip] = self._random_ips(rng, country[fresh_ip])
        device[pos] = _NULL_DEVICE
        ip[pos] = 0

        merchant = np.empty(n, dtype=np.int64)
        r = rng.random(n)
        fav_pos = pos & ~away & (r < _P_FAV_POS)
        merchant[fav_pos] = self.fav_pos[card[fav_pos], rng.integers(0, 3, int(fav_pos.sum()))]
        for c in range(_N_COUNTRIES):
            sel = np.flatnonzero(pos & ~fav_pos & (country == c))
            merchant[sel] = self.pos_pools[c].sample(rng, len(sel))
        fav_on = ~pos & (r < _P_FAV_ONLINE)
        merchant[fav_on] = self.fav_online[card[fav_on], rng.integers(0, 2, int(fav_on.sum()))]
        sel = np.flatnonzero(~pos & ~fav_on)
        merchant[sel] = self.online_pool.sample(rng, len(sel))

        typical = self.typical[card]
        amount = typical * rng.lognormal(0.0, _TXN_SIGMA, n) * self.m_factor[merchant]
        kind = rng.random(n)
        small = kind < _P_SMALL
        amount[small] = rng.uniform(0.5, 6.0, int(small.sum()))
        large = kind > 1 - _P_LARGE
        amount[large] = typical[large] * _log_uniform(rng, 3.0, 12.0, int(large.sum()))

        return _Rows(
            card,
            t,
            merchant,
            device,
            ip,
            country,
            channel,
            amount,
            np.zeros(n, dtype=np.int8),
            np.full(n, -1, dtype=np.int64),
        )

    # ----------------------------------------------------------------------------- fraud rows
    def fraud(self, rng: np.random.Generator, d: int) -> _Rows:
        parts = [
            self._card_testing(rng, self.plan_testing.for_day(d)),
            self._account_takeover(rng, self.plan_ato.for_day(d)),
            self._compromised(rng, d),
            self._odd_hours(rng, self.plan_odd.for_day(d)),
        ]
        parts = [p for p in parts if len(p)]
        if not parts:
            return _empty_rows()
        # Event ids restart at 0 in each mechanism; make them unique within the day.
        offset = 0
        for p in parts:
            p.event = p.event + offset
            offset = int(p.event.max()) + 1
        return _Rows.concat(parts)

    def _rows(
        self,
        mech: str,
        card: np.ndarray,
        t: np.ndarray,
        merchant: np.ndarray,
        device: np.ndarray,
        ip: np.ndarray,
        country: np.ndarray,
        channel: np.ndarray,
        amount: np.ndarray,
        event: np.ndarray,
    ) -> _Rows:
        n = len(card)
        code = MECHANISMS.index(mech) + 1
        return _Rows(
            card.astype(np.int64),
            t.astype(np.int64),
            merchant.astype(np.int64),
            device.astype(np.int64),
            ip.astype(np.uint32),
            country.astype(np.int64),
            channel.astype(np.int8),
            amount.astype(np.float64),
            np.full(n, code, dtype=np.int8),
            event.astype(np.int64),
        )

    def _card_testing(self, rng: np.random.Generator, sl: slice) -> _Rows:
        size, follow = self.plan_testing.size[sl], self.plan_testing.extra[sl]
        k = len(size)
        if k == 0:
            return _empty_rows()
        card = rng.integers(0, self.cfg.cards, k)
        device = self._new_devices(k)
        # Many testers go through a proxy in the card's own country.
        country = np.where(
            rng.random(k) < 0.4,
            self.home[card],
            np.searchsorted(_cumulative(_FRAUD_W), rng.random(k), side="right"),
        )
        ip = self._random_ips(rng, country)
        channel = np.where(rng.random(k) < 0.85, _CH_ECOM, _CH_MOBILE)
        n_merch = rng.integers(1, 4, k)
        merchants = self.tester_pool.sample(rng, 3 * k).reshape(k, 3)

        ev = np.repeat(np.arange(k), size)
        n = len(ev)
        first = np.concatenate([[0], np.cumsum(size)[:-1]])
        pos_in_event = np.arange(n) - first[ev]
        is_follow = (follow[ev] == 1) & (pos_in_event == size[ev] - 1)

        # Bots fire a probe every few seconds; the cash-out comes minutes to hours later.
        gap = np.maximum(rng.exponential(20 * _US_PER_S, n), _US_PER_S).astype(np.int64)
        gap[is_follow] = rng.integers(5 * _US_PER_MIN, 3 * _US_PER_HOUR, int(is_follow.sum()))
        gap[pos_in_event == 0] = 0
        offset = _grouped_cumsum(gap, first, size)
        span = np.zeros(k, dtype=np.int64)
        np.maximum.at(span, ev, offset)
        start = (rng.random(k) * (_US_PER_DAY - 1 - span)).astype(np.int64)
        t = start[ev] + offset

        merchant = merchants[ev, rng.integers(0, 3, n) % n_merch[ev]]
        amount = rng.uniform(0.5, 5.0, n)
        whole = rng.random(n) < 0.3
        amount[whole] = np.ceil(amount[whole])
        nf = int(is_follow.sum())
        merchant[is_follow] = self.online_pool.sample(rng, nf)
        amount[is_follow] = self.typical[card[ev[is_follow]]] * _log_uniform(rng, 3.0, 12.0, nf)
        return self._rows(
            "card_testing",
            card[ev],
            t,
            merchant,
            device[ev],
            ip[ev],
            country[ev],
            channel[ev],
            amount,
            ev,
        )

    def _account_takeover(self, rng: np.random.Generator, sl: slice) -> _Rows:
        size = self.plan_ato.size[sl]
        k = len(size)
        if k == 0:
            return _empty_rows()
        card = rng.integers(0, self.cfg.cards, k)
        home = self.home[card]
        country = np.where(rng.random(k) < 0.7, self._foreign(rng, home, _FRAUD_W), home)
        device = self._new_devices(k)
        ip = self._random_ips(rng, country)
        channel = np.where(rng.random(k) < 0.5, _CH_ECOM, _CH_MOBILE)
        night = rng.random(k) < 0.55
        start = np.where(
            night, rng.integers(0, 6 * _US_PER_HOUR, k), rng.integers(0, _US_PER_DAY, k)
        )

        ev = np.repeat(np.arange(k), size)
        n = len(ev)
        first = np.concatenate([[0], np.cumsum(size)[:-1]])
        gap = rng.integers(2 * _US_PER_MIN, 60 * _US_PER_MIN, n)
        gap[np.arange(n) == first[ev]] = 0
        t = start[ev] + _grouped_cumsum(gap, first, size)
        merchant = self.online_pool.sample(rng, n)
        amount = self.typical[card[ev]] * _log_uniform(rng, 3.0, 20.0, n)
        return self._rows(
            "account_takeover",
            card[ev],
            t,
            merchant,
            device[ev],
            ip[ev],
            country[ev],
            channel[ev],
            amount,
            ev,
        )

    def _compromised(self, rng: np.random.Generator, d: int) -> _Rows:
        parts = []
        for w in self.windows:
            i = d - w.first_day
            if not 0 <= i < len(w.rows_per_day) or w.rows_per_day[i] == 0:
                continue
            n = int(w.rows_per_day[i])
            m = w.merchant
            m_country = int(self.m_country[m])
            # Stolen cards from everywhere, with a bias to the merchant's own market.
            lo, hi = self.home_offsets[m_country], self.home_offsets[m_country + 1]
            local = rng.random(n) < 0.5
            card = rng.integers(0, self.cfg.cards, n)
            if hi > lo:
                card[local] = self.cards_by_home[rng.integers(lo, hi, int(local.sum()))]
            t = _PROFILES[0].sample(rng, 0, _US_PER_DAY, n)
            amount = (self.mean_typical * self.m_factor[m]) * _log_uniform(rng, 2.0, 6.0, n)
            if self.m_kind[m] == _KIND_POS:
                channel = np.full(n, _CH_POS)
                device = np.full(n, _NULL_DEVICE)
                ip = np.zeros(n, dtype=np.uint32)
                country = np.full(n, m_country)
            else:
                channel = np.where(rng.random(n) < 0.75, _CH_ECOM, _CH_MOBILE)
                ring = rng.integers(0, len(w.ring_devices), n)
                device = w.ring_devices[ring]
                ip = w.ring_ips[ring]
                country = np.full(n, w.ring_country)
            parts.append(
                self._rows(
                    "compromised_merchant",
                    card,
                    t,
                    np.full(n, m),
                    device,
                    ip,
                    country,
                    channel,
                    amount,
                    np.arange(n),
                )
            )
        if not parts:
            return _empty_rows()
        offset = 0
        for p in parts:
            p.event += offset
            offset += len(p)
        return _Rows.concat(parts)

    def _odd_hours(self, rng: np.random.Generator, sl: slice) -> _Rows:
        size = self.plan_odd.size[sl]
        k = len(size)
        if k == 0:
            return _empty_rows()
        # Victims are cards with a device already in their history (the fraudster uses it:
        # malware, remote access, a member of the household); on day one any card will do.
        known = np.flatnonzero(self.dev_seen.any(axis=1))
        if len(known):
            card = known[rng.integers(0, len(known), k)]
            slot = np.argmax(rng.random((k, 3)) * self.dev_seen[card], axis=1)
        else:
            card = rng.integers(0, self.cfg.cards, k)
            slot = np.zeros(k, dtype=np.int64)
        # Slot 0 is the card's phone, the only device its mobile-app payments come from.
        channel = np.where((slot == 0) & (rng.random(k) < 0.5), _CH_MOBILE, _CH_ECOM)
        start = rng.integers(0, 6 * _US_PER_HOUR, k)

        ev = np.repeat(np.arange(k), size)
        n = len(ev)
        first = np.concatenate([[0], np.cumsum(size)[:-1]])
        gap = rng.integers(10 * _US_PER_MIN, 90 * _US_PER_MIN, n)
        gap[np.arange(n) == first[ev]] = 0
        t = np.minimum(start[ev] + _grouped_cumsum(gap, first, size), 6 * _US_PER_HOUR - 1)
        c = card[ev]
        fav = rng.random(n) < 0.3
        merchant = self.online_pool.sample(rng, n)
        merchant[fav] = self.fav_online[c[fav], rng.integers(0, 2, int(fav.sum()))]
        amount = self.typical[c] * _log_uniform(rng, 1.5, 4.0, n)
        return self._rows(
            "odd_hours",
            c,
            t,
            merchant,
            self.dev[card, slot][ev],
            self.dev_ip[card, slot][ev],
            self.home[c],
            channel[ev],
            amount,
            ev,
        )


def _empty_rows() -> _Rows:
    e = np.empty(0, dtype=np.int64)
    return _Rows(
        e,
        e,
        e,
        e,
        np.empty(0, dtype=np.uint32),
        e,
        np.empty(0, dtype=np.int8),
        np.empty(0),
        np.empty(0, dtype=np.int8),
        e,
    )


def _grouped_cumsum(values: np.ndarray, first: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarting at each group (groups are contiguous)."""
    total = np.cumsum(values)
    before = np.concatenate([[0], total])[first]
    return total - np.repeat(before, size)


def _fit_events(t: np.ndarray, event: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Squeeze each multi-row fraud event into the chunk its first row falls in.

    Chunks are written one after another, so a row may not spill into the next chunk; an event
    that would (a late-night takeover running past midnight) is compressed in time instead.
    """
    n_ev = int(event.max()) + 1
    start = np.full(n_ev, np.iinfo(np.int64).max)
    last = np.zeros(n_ev, dtype=np.int64)
    np.minimum.at(start, event, t)
    np.maximum.at(last, event, t)
    chunk = np.searchsorted(bounds, start, side="right") - 1
    limit = bounds[chunk + 1] - 1
    over = last > limit
    if not over.any():
        return t
    scale = np.ones(n_ev)
    scale[over] = (limit[over] - start[over]) / (last[over] - start[over])
    return start[event] + ((t - start[event]) * scale[event]).astype(np.int64)


def _ids(prefix: str, numbers: np.ndarray, width: int, null: np.ndarray | None = None) -> pa.Array:
    arr = pc.cast(pa.array(numbers, mask=null), pa.string())
    return pc.utf8_replace_slice(pc.utf8_lpad(arr, width, "0"), start=0, stop=0, replacement=prefix)


def _device_ids(device: np.ndarray) -> pa.Array:
    # Counters are scrambled by an odd multiplier (a bijection mod 2**32) so that an id does not
    # reveal when the device first appeared.
    null = device == _NULL_DEVICE
    scrambled = (device.astype(np.uint64) * np.uint64(2654435761) + np.uint64(40503)) & np.uint64(
        0xFFFFFFFF
    )
    return _ids("d", scrambled, 10, null)


def _ip_strings(ip: np.ndarray, null: np.ndarray) -> pa.Array:
    octets = [pc.cast(pa.array((ip >> s) & 0xFF, mask=null), pa.string()) for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


class _Encoder:
    """Turns integer-coded rows into the Arrow table of :data:`TRANSACTION_SCHEMA`."""

    def __init__(self, n_cards: int, n_merchants: int, rates: Rates) -> None:
        self.cards = _ids("c", np.arange(n_cards), len(str(n_cards - 1)))
        self.merchants = _ids("m", np.arange(n_merchants), len(str(n_merchants - 1)))
        self.countries = pa.array(COUNTRIES)
        self.currencies = pa.array([CURRENCY_BY_COUNTRY[c] for c in COUNTRIES])
        self.rates = rates
        self.country_currency = np.array([CURRENCY_BY_COUNTRY[c] for c in COUNTRIES], dtype=object)
        self.country_scale = np.array(
            [10.0 ** (minor_units(CURRENCY_BY_COUNTRY[c]) or 0) for c in COUNTRIES]
        )
        self.channels = pa.array(CHANNELS)
        self.mechanisms = pa.array(("",) + MECHANISMS)
        self.next_id = 0

    def table(self, rows: _Rows, ts: np.ndarray, chargeback_delay_us: np.ndarray) -> pa.Table:
        """The rows at their UTC instants ``ts`` (µs), ids in that order."""
        n = len(rows)
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        fraud = rows.mechanism > 0
        null_dev = rows.device == _NULL_DEVICE
        country = pa.array(rows.country)
        columns = [
            _ids("t", ids, 10),
            pa.array(ts, type=_TS),
            self.cards.take(pa.array(rows.card)),
            self.merchants.take(pa.array(rows.merchant)),
            _device_ids(rows.device),
            _ip_strings(rows.ip, null_dev),
            self.countries.take(country),
            self.currencies.take(country),
            self.channels.take(pa.array(rows.channel)),
            pa.array(self._paid(rows, ts)),
            pa.array(fraud.astype(np.int8)),
            self.mechanisms.take(pa.array(rows.mechanism)),
            pa.array(ts + chargeback_delay_us, type=_TS, mask=~fraud),
        ]
        return pa.Table.from_arrays(columns, schema=TRANSACTION_SCHEMA)

    def _paid(self, rows: _Rows, ts: np.ndarray) -> np.ndarray:
        """The amounts (made in EUR) in the currency of the country where they are paid, at the
        rate of their day, in that currency's minor units (never below one of them)."""
        rate = self.rates.eur_per_unit(self.country_currency[rows.country], ts)
        scale = self.country_scale[rows.country]
        return np.maximum(np.round(rows.amount / rate * scale), 1.0) / scale


def generate_world(config: WorldConfig, out_path: Path, progress: bool = False) -> WorldSummary:
    """Generate the world of ``config`` into one parquet file at ``out_path``.

    Parent directories are created and an existing file is replaced. Returns what was written.
    """
    end = config.resolved_end()
    _check_end(end)
    start = end - timedelta(days=config.n_days)
    world = _World(config, start)
    fx = fx_table(config.seed, start, end)
    fx_path = write_fx_table(fx, Path(out_path).parent / FX_FILE)
    encoder = _Encoder(config.cards, config.merchants, Rates(fx))

    expected_per_day = config.n_transactions / config.n_days * _WEEKDAY_FACTOR.max()
    slices = max(1, math.ceil(expected_per_day / config.max_chunk_rows))
    bounds = np.array([_US_PER_DAY * k // slices for k in range(slices + 1)], dtype=np.int64)
    start_us = int(start.timestamp()) * _US_PER_S

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(config).items()}
    meta["end"] = end.isoformat()
    schema = TRANSACTION_SCHEMA.with_metadata({"vigil.world.config": json.dumps(meta)})

    by_mechanism = dict.fromkeys(MECHANISMS, 0)
    n_rows = n_fraud = n_groups = 0
    end_us = start_us + config.n_days * _US_PER_DAY
    # Rows made but not written yet: local times become instants up to _MAX_AHEAD_US before
    # their wall-clock reading, so a row is written once no later chunk can precede it.
    carry = _Pending.empty()

    def write(ready: _Pending) -> None:
        nonlocal n_rows, n_fraud, n_groups
        inside = (ready.ts >= start_us) & (ready.ts < end_us)
        ready = ready.take(np.flatnonzero(inside))
        if not len(ready.rows):
            return
        rows = ready.rows
        writer.write_table(encoder.table(rows, ready.ts, ready.delay), row_group_size=len(rows))
        n_groups += 1
        n_rows += len(rows)
        fraud_rows = rows.mechanism[rows.mechanism > 0]
        n_fraud += len(fraud_rows)
        for code, count in zip(*np.unique(fraud_rows, return_counts=True), strict=True):
            by_mechanism[MECHANISMS[code - 1]] += int(count)

    with (
        pq.ParquetWriter(out_path, schema) as writer,
        tqdm(total=config.n_days * slices, disable=not progress, unit="chunk", desc="world") as bar,
    ):
        for d in range(config.n_days):
            rng = np.random.default_rng(world.day_seeds[d])
            world.advance(rng, d)
            fraud = world.fraud(rng, d)
            if len(fraud):
                fraud.t = _fit_events(fraud.t, fraud.event, bounds)
            fraud_chunk = np.searchsorted(bounds, fraud.t, side="right") - 1
            day_start_us = start_us + d * _US_PER_DAY
            for s in range(slices):
                rows = _Rows.concat(
                    [
                        world.legit(rng, d, int(bounds[s]), int(bounds[s + 1])),
                        fraud.take(np.flatnonzero(fraud_chunk == s)),
                    ]
                )
                # Shuffle before the stable sort so equal timestamps are not ordered by label.
                order = rng.permutation(len(rows))
                order = order[np.argsort(rows.t[order], kind="stable")]
                rows = rows.take(order)
                delay = np.zeros(len(rows), dtype=np.int64)
                is_fraud = rows.mechanism > 0
                delay[is_fraud] = _chargeback_delay(rng, int(is_fraud.sum()))
                made = _Pending(rows, _local_to_utc_us(day_start_us + rows.t, rows.country), delay)
                carry = _Pending.concat(carry, made)
                horizon = day_start_us + int(bounds[s + 1]) - _MAX_AHEAD_US
                ready = carry.ts < horizon
                write(carry.take(np.flatnonzero(ready)).sorted())
                carry = carry.take(np.flatnonzero(~ready))
                bar.update(1)
        write(carry.sorted())

    return WorldSummary(
        path=out_path,
        n_transactions=n_rows,
        n_fraud=n_fraud,
        fraud_rate=n_fraud / n_rows if n_rows else 0.0,
        start=start,
        end=end,
        by_mechanism=by_mechanism,
        n_cards=config.cards,
        n_merchants=config.merchants,
        n_row_groups=n_groups,
        fx_path=fx_path,
    )


_ZONES = [COUNTRY_TIME_ZONES[c] for c in COUNTRIES]
# The furthest ahead of UTC any of the world's countries gets (Europe in summer: +2 h), with room.
_MAX_AHEAD_US = 3 * _US_PER_HOUR


def _local_to_utc_us(local_us: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Wall-clock times (µs, read as naive local times) in each row's country -> UTC instants.
    A wall-clock time that does not exist (the spring-forward hour) moves forward; one that
    occurs twice (the fall-back hour) is read as standard time."""
    out = np.empty_like(local_us)
    for code in np.unique(country):
        rows = np.flatnonzero(country == code)
        naive = pd.DatetimeIndex(local_us[rows].astype("datetime64[us]"))
        aware = naive.tz_localize(
            _ZONES[int(code)],
            ambiguous=np.zeros(len(rows), dtype=bool),
            nonexistent="shift_forward",
        )
        out[rows] = aware.tz_convert("UTC").as_unit("us").asi8
    return out


@dataclass
class _Pending:
    """Rows made, at their UTC instants, with their chargeback delays: not written yet."""

    rows: _Rows
    ts: np.ndarray
    delay: np.ndarray

    @staticmethod
    def empty() -> _Pending:
        return _Pending(_empty_rows(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @staticmethod
    def concat(a: _Pending, b: _Pending) -> _Pending:
        return _Pending(
            _Rows.concat([a.rows, b.rows]),
            np.concatenate([a.ts, b.ts]),
            np.concatenate([a.delay, b.delay]),
        )

    def take(self, idx: np.ndarray) -> _Pending:
        return _Pending(self.rows.take(idx), self.ts[idx], self.delay[idx])

    def sorted(self) -> _Pending:
        """By instant; rows at the same instant keep the order they were made in."""
        return self.take(np.argsort(self.ts, kind="stable"))


def _chargeback_delay(rng: np.random.Generator, n: int) -> np.ndarray:
    # 2-60 days, most within a month (mean about 21 days): labels arrive late.
    days = 2.0 + 58.0 * rng.beta(1.6, 3.2, n)
    return (days * _US_PER_DAY).astype(np.int64)


def load_transactions(path: Path) -> pd.DataFrame:
    """Read a world file into a DataFrame (timestamps as ``datetime64[us, UTC]``)."""
    return pq.read_table(path).to_pandas()
