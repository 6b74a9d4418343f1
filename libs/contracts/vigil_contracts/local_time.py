"""Local time: one rule for the world, training, batch scoring and serving.

A transaction's local time is its instant in the time zone of the country where it happened
(:data:`COUNTRY_TIME_ZONES`, one IANA zone per country, daylight saving included). So the same
instant, written with any UTC offset, has one hour of day whenever its country is known. For a
country without a zone here (or no country), the offset the timestamp was written with is taken
as the payer's: online, what the client sent; offline, where raw data keeps only the instant,
UTC. Countries spanning several zones get their most populous one (documented approximation).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from zoneinfo import ZoneInfo

#: ISO 3166-1 alpha-2 country -> IANA time zone.
COUNTRY_TIME_ZONES: dict[str, str] = {
    "AE": "Asia/Dubai",
    "AR": "America/Argentina/Buenos_Aires",
    "AT": "Europe/Vienna",
    "AU": "Australia/Sydney",
    "BE": "Europe/Brussels",
    "BG": "Europe/Sofia",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CH": "Europe/Zurich",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CO": "America/Bogota",
    "CY": "Asia/Nicosia",
    "CZ": "Europe/Prague",
    "DE": "Europe/Berlin",
    "DK": "Europe/Copenhagen",
    "EE": "Europe/Tallinn",
    "EG": "Africa/Cairo",
    "ES": "Europe/Madrid",
    "FI": "Europe/Helsinki",
    "FR": "Europe/Paris",
    "GB": "Europe/London",
    "GR": "Europe/Athens",
    "HK": "Asia/Hong_Kong",
    "HR": "Europe/Zagreb",
    "HU": "Europe/Budapest",
    "ID": "Asia/Jakarta",
    "IE": "Europe/Dublin",
    "IL": "Asia/Jerusalem",
    "IN": "Asia/Kolkata",
    "IS": "Atlantic/Reykjavik",
    "IT": "Europe/Rome",
    "JP": "Asia/Tokyo",
    "KE": "Africa/Nairobi",
    "KR": "Asia/Seoul",
    "LT": "Europe/Vilnius",
    "LU": "Europe/Luxembourg",
    "LV": "Europe/Riga",
    "MA": "Africa/Casablanca",
    "MT": "Europe/Malta",
    "MX": "America/Mexico_City",
    "MY": "Asia/Kuala_Lumpur",
    "NG": "Africa/Lagos",
    "NL": "Europe/Amsterdam",
    "NO": "Europe/Oslo",
    "NZ": "Pacific/Auckland",
    "PH": "Asia/Manila",
    "PL": "Europe/Warsaw",
    "PT": "Europe/Lisbon",
    "RO": "Europe/Bucharest",
    "RS": "Europe/Belgrade",
    "SA": "Asia/Riyadh",
    "SE": "Europe/Stockholm",
    "SG": "Asia/Singapore",
    "SI": "Europe/Ljubljana",
    "SK": "Europe/Bratislava",
    "TH": "Asia/Bangkok",
    "TR": "Europe/Istanbul",
    "TW": "Asia/Taipei",
    "UA": "Europe/Kyiv",
    "US": "America/New_York",
    "VN": "Asia/Ho_Chi_Minh",
    "ZA": "Africa/Johannesburg",
}


@cache
def zone_of(country: str | None) -> ZoneInfo | None:
    """The time zone of ``country``, or None when it has none here."""
    name = COUNTRY_TIME_ZONES.get(country or "")
    return ZoneInfo(name) if name else None


def local_time(timestamp: datetime, country: str | None) -> datetime:
    """``timestamp`` (aware) as the wall-clock time where the transaction happened."""
    zone = zone_of(country)
    return timestamp.astimezone(zone) if zone is not None else timestamp


def local_hour(timestamp: datetime, country: str | None) -> int:
    """The hour of day (0-23) of :func:`local_time`."""
    return local_time(timestamp, country).hour
