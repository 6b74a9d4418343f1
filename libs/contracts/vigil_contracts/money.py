"""Money: ISO 4217 currencies with their minor units, and Vigil's one base currency.

Every amount a feature is computed from is first converted to :data:`BASE_CURRENCY` with the
rate of its day (the dated FX table the world ships and Feast serves as the ``fx_rates`` view),
so a card's average means one thing whatever currencies it paid in. The original amount and
currency stay on the transaction for display and reasons.
"""

from __future__ import annotations

BASE_CURRENCY = "EUR"

#: Active ISO 4217 currency codes -> their minor units (digits after the decimal point).
MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys((
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
        "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF",
        "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
        "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
        "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP",
        "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
        "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK",
        "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
        "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP",
        "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR",
        "ZMW", "ZWG",
    ), 2),
    **dict.fromkeys((
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def minor_units(currency: str) -> int | None:
    """Digits after the decimal point of ``currency``; None when it is not an ISO 4217 code."""
    return MINOR_UNITS.get(currency)


def fits_minor_units(amount: float, digits: int) -> bool:
    """Whether ``amount`` has at most ``digits`` decimals (``12.10`` has one). In minor units it
    must be a whole number, up to the float's own rounding (a few ulps; one more decimal is off
    by at least 10**-9 of a unit for any amount Vigil takes)."""
    scaled = amount * _SCALE[digits]
    return abs(scaled - round(scaled)) <= 2e-15 * abs(scaled) + 1e-9


_SCALE = {digits: 10.0**digits for digits in range(5)}
