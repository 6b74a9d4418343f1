"""The hour of day of many transactions at once, by the one local-time rule of
``vigil_contracts.local_time`` (the instant in its country's zone; raw data keeps only the
instant, so a country without a zone there is read in UTC). A test holds it equal to the
contract's ``local_hour`` transaction by transaction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil_contracts.local_time import COUNTRY_TIME_ZONES


def local_hours(
    timestamps: pd.Series | pd.DatetimeIndex, countries: pd.Series | np.ndarray
) -> np.ndarray:
    """Local hour (0-23, int64) of each instant in ``timestamps`` in its row's country."""
    instants = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    country = np.asarray(pd.Series(countries).fillna("").astype(str))
    hours = np.asarray(instants.hour, dtype=np.int64).copy()  # UTC, the fallback
    for code in np.unique(country):
        zone = COUNTRY_TIME_ZONES.get(code)
        if zone is not None:
            rows = np.flatnonzero(country == code)
            hours[rows] = instants[rows].tz_convert(zone).hour
    return hours
