"""Per-feature contributions -> reasons in business words.

The model's largest contributions towards its answer are turned into sentences a fraud analyst
or a merchant can act on ("amount is 8x this card's 30-day average"), using the feature's value
for this transaction. A flagged transaction is explained by what raised its score; a
``not_fraud`` one says "no risk signal" and nothing more (the gateway asks the predictor for
contributions of flagged transactions only: they are most of its cost). Features without a
template get a plain generic sentence, so a new feature never breaks an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vigil_contracts.api import Reason
from vigil_contracts.feature_contract import short_name
from vigil_contracts.money import BASE_CURRENCY
from vigil_contracts.request_features import CHANNEL_CODES
from vigil_contracts.thresholds import Label

# Contributions (log-odds) smaller than this are noise, not reasons.
MIN_CONTRIBUTION = 1e-3
_CHANNEL_NAMES = {code: name for name, code in CHANNEL_CODES.items()}
_CHANNEL_WORDS = {
    "pos": "card-present (POS)",
    "ecom": "online (e-commerce)",
    "mobile": "mobile-app",
}


@dataclass(frozen=True)
class Context:
    """What a sentence may mention besides the feature's value."""

    currency: str
    """The currency the transaction was paid in (features compare amounts in EUR)."""
    device_present: bool
    raising: bool  # True when the feature pushed the score up
    paid: float = 0.0
    """The amount as paid, in ``currency``."""


Template = Callable[[float | None, Context], tuple[str, str]]


def _num(value: float) -> str:
    text = f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return text.removesuffix(".0")


def _count(value: float, noun: str) -> str:
    n = round(value)
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


_UP_TO_CARD = "before this transaction"
# A merchant's windows are whole UTC hours / days (tiles, vigil_contracts.windows), up to t.
_MERCHANT_24H = "in this transaction's UTC hour (before it) and the 24 hours before"
_MERCHANT_7D = "in this transaction's UTC day (before it) and the 7 days before"
_UP_TO_DEVICE = "before this transaction"


def _money(value: float) -> str:
    """An amount of the base currency (features compare amounts in EUR)."""
    return f"{value:,.2f} {BASE_CURRENCY}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            return _count(seconds / size, unit)
    return _count(seconds, "second")


def _counted(code: str, noun: str, tail: str) -> Template:
    """``"<n> <noun>s <tail>"``; missing means no history of that entity."""

    def template(value: float | None, ctx: Context) -> tuple[str, str]:
        if value is None:
            return _no_history(code)
        return code, f"{_count(value, noun)} {tail}"

    return template


def _no_history(code: str) -> tuple[str, str]:
    if code.startswith("CARD"):
        return "NO_CARD_HISTORY", "no recent history for this card"
    if code.startswith("MERCHANT"):
        return "NO_MERCHANT_HISTORY", "no recent history for this merchant"
    return "NO_DEVICE_HISTORY", "no recent history for this device"


def _amount_ratio(value: float | None, ctx: Context) -> tuple[str, str]:
    if value is None:
        return "NO_CARD_HISTORY", "no 30-day spending history for this card"
    if value >= 1.0:
        return "AMOUNT_HIGH_FOR_CARD", f"amount is {_num(value)}× this card's 30-day average"
    return "AMOUNT_LOW_FOR_CARD", f"amount is below this card's 30-day average ({_num(value)}×)"


def _amount_zscore(value: float | None, ctx: Context) -> tuple[str, str]:
    if value is None:
        return "NO_CARD_HISTORY", "not enough spending history on this card to judge the amount"
    if value > 1.0:
        return (
            "AMOUNT_UNUSUAL_FOR_CARD",
            f"amount is {_num(value)} standard deviations above this card's 30-day mean",
        )
    return "AMOUNT_USUAL_FOR_CARD", "amount is within this card's usual range"


def _txn_amount(value: float | None, ctx: Context) -> tuple[str, str]:
    if value is None:
        return (
            "CURRENCY_UNSUPPORTED",
            f"no exchange rate to {BASE_CURRENCY} is known for {ctx.currency}",
        )
    if ctx.currency == BASE_CURRENCY:
        return "TRANSACTION_AMOUNT", f"amount of {_money(value)}"
    return (
        "TRANSACTION_AMOUNT",
        f"amount of {_money(value)} ({ctx.paid:,.2f} {ctx.currency} as paid)",
    )


def _hour(value: float | None, ctx: Context) -> tuple[str, str]:
    hour = int(value or 0)
    if hour < 6:
        return "NIGHT_TIME", f"night-time transaction ({hour:02d}:00-{hour:02d}:59 local time)"
    return "TIME_OF_DAY", f"transaction at {hour:02d}:00-{hour:02d}:59 local time"


def _is_night(value: float | None, ctx: Context) -> tuple[str, str]:
    if value:
        return "NIGHT_TIME", "night-time transaction"
    return "DAYTIME", "daytime transaction"


def _channel(value: float | None, ctx: Context) -> tuple[str, str]:
    name = _CHANNEL_NAMES.get(value if value is not None else -1.0, "")
    return "CHANNEL", f"{_CHANNEL_WORDS.get(name, 'unrecognised-channel')} transaction"


def _since_last(value: float | None, ctx: Context) -> tuple[str, str]:
    if value is None:
        return "FIRST_CARD_TRANSACTION", "no earlier transaction on record for this card"
    code = "RAPID_SUCCESSION" if ctx.raising and value < 3600 else "TIME_SINCE_LAST_TRANSACTION"
    return code, f"{_duration(value)} since this card's previous transaction"


def _device_age(value: float | None, ctx: Context) -> tuple[str, str]:
    if not ctx.device_present:
        return "NO_DEVICE", "no device information with this transaction"
    if value is None:
        return "NEW_DEVICE", "first transaction from this device"
    if value < 1.0:
        return "NEW_DEVICE", f"device first seen {_duration(value * 86400)} ago"
    return "KNOWN_DEVICE", f"device first seen {_count(value, 'day')} ago"


def _is_new_device(value: float | None, ctx: Context) -> tuple[str, str]:
    if not ctx.device_present:
        return "NO_DEVICE", "no device information with this transaction"
    if value:
        return "NEW_DEVICE", "first transaction from this device"
    return "KNOWN_DEVICE", "device seen before"


def _country_mismatch(value: float | None, ctx: Context) -> tuple[str, str]:
    if value is None:
        return "HOME_COUNTRY_UNKNOWN", "the card's home country is unknown"
    if value:
        return "COUNTRY_MISMATCH", "transaction country differs from the card's home country"
    return "HOME_COUNTRY", "transaction is in the card's home country"


def _money_fact(code: str, sentence: str) -> Template:
    def template(value: float | None, ctx: Context) -> tuple[str, str]:
        if value is None:
            return _no_history(code)
        return code, sentence.format(_money(value))

    return template


def _share(code: str, sentence: str) -> Template:
    def template(value: float | None, ctx: Context) -> tuple[str, str]:
        if value is None:
            return _no_history(code)
        return code, sentence.format(_pct(value))

    return template


TEMPLATES: dict[str, Template] = {
    "txn_amount": _txn_amount,
    "amount_to_card_avg_30d": _amount_ratio,
    "amount_zscore_card_30d": _amount_zscore,
    "hour_of_day": _hour,
    "is_night": _is_night,
    "channel_code": _channel,
    "seconds_since_card_last_txn": _since_last,
    "device_age_days": _device_age,
    "is_new_device": _is_new_device,
    "country_mismatch": _country_mismatch,
    # Windows end at this transaction (finished at its instant from the entity's stored events),
    # and the sentences say so: a card last used three weeks ago has none in the last hour.
    "card_txn_count_1h": _counted(
        "CARD_VELOCITY_1H", "transaction", f"on this card in the hour {_UP_TO_CARD}"
    ),
    "card_txn_count_24h": _counted(
        "CARD_VELOCITY_24H", "transaction", f"on this card in the 24 hours {_UP_TO_CARD}"
    ),
    "card_txn_count_7d": _counted(
        "CARD_VELOCITY_7D", "transaction", f"on this card in the 7 days {_UP_TO_CARD}"
    ),
    "card_amount_sum_24h": _money_fact(
        "CARD_SPEND_24H", f"{{}} spent on this card in the 24 hours {_UP_TO_CARD}"
    ),
    "card_amount_avg_30d": _money_fact(
        "CARD_AVERAGE_AMOUNT", f"this card's average amount in the 30 days {_UP_TO_CARD} is {{}}"
    ),
    "card_amount_std_30d": _money_fact(
        "CARD_AMOUNT_SPREAD",
        f"this card's amounts varied by {{}} (standard deviation, 30 days {_UP_TO_CARD})",
    ),
    "card_amount_max_30d": _money_fact(
        "CARD_MAX_AMOUNT", f"this card's largest amount in the 30 days {_UP_TO_CARD} is {{}}"
    ),
    "card_distinct_merchants_24h": _counted(
        "CARD_MANY_MERCHANTS", "merchant", f"used by this card in the 24 hours {_UP_TO_CARD}"
    ),
    "card_distinct_devices_30d": _counted(
        "CARD_MANY_DEVICES", "device", f"used with this card in the 30 days {_UP_TO_CARD}"
    ),
    "card_distinct_countries_30d": _counted(
        "CARD_MANY_COUNTRIES", "country", f"where this card was used in the 30 days {_UP_TO_CARD}"
    ),
    "merchant_txn_count_24h": _counted(
        "MERCHANT_VOLUME_24H", "transaction", f"at this merchant {_MERCHANT_24H}"
    ),
    "merchant_txn_count_7d": _counted(
        "MERCHANT_VOLUME_7D", "transaction", f"at this merchant {_MERCHANT_7D}"
    ),
    "merchant_amount_avg_7d": _money_fact(
        "MERCHANT_AVERAGE_AMOUNT", f"this merchant's average amount {_MERCHANT_7D} is {{}}"
    ),
    "merchant_night_share_7d": _share(
        "MERCHANT_NIGHT_SHARE",
        f"{{}} of this merchant's transactions {_MERCHANT_7D} were at night (local time)",
    ),
    "merchant_small_amount_share_24h": _share(
        "MERCHANT_SMALL_AMOUNTS",
        f"{{}} of this merchant's transactions {_MERCHANT_24H} were small amounts "
        f"(under 5 {BASE_CURRENCY}, a card-testing pattern)",
    ),
    "device_txn_count_24h": _counted(
        "DEVICE_VELOCITY_24H", "transaction", f"from this device in the 24 hours {_UP_TO_DEVICE}"
    ),
    "device_distinct_cards_7d": _counted(
        "DEVICE_MANY_CARDS", "card", f"used on this device in the 7 days {_UP_TO_DEVICE}"
    ),
    "device_distinct_countries_7d": _counted(
        "DEVICE_MANY_COUNTRIES",
        "country",
        f"where this device was used in the 7 days {_UP_TO_DEVICE}",
    ),
}
# Where device features describe "no device", say so once rather than "no device history".
_DEVICE_VIEW = "device_stats"


def describe(feature: str, value: float | None, ctx: Context) -> tuple[str, str]:
    """(code, text) for one feature's value; a generic sentence for features without a template."""
    name = short_name(feature)
    if feature.startswith(_DEVICE_VIEW + "__") and not ctx.device_present:
        return "NO_DEVICE", "no device information with this transaction"
    template = TEMPLATES.get(name)
    if template is not None:
        return template(value, ctx)
    words = name.replace("_", " ")
    if value is None:
        return "MODEL_SIGNAL", f"{words} is unknown"
    return "MODEL_SIGNAL", f"{words} is {_num(value)}"


_NO_RISK_SIGNAL = ("NO_RISK_SIGNAL", "no risk signal strong enough to flag this transaction")
# Most answers are not_fraud: their one reason is made once (answers only ever read it).
NO_RISK_REASON = Reason(code=_NO_RISK_SIGNAL[0], text=_NO_RISK_SIGNAL[1])
_MODEL_BASELINE = ("MODEL_BASELINE", "the model's overall risk for transactions like this one")


def explain(
    label: Label,
    feature_names: Sequence[str],
    values: Sequence[float | None],
    contributions: Sequence[float] | None,
    *,
    currency: str,
    device_present: bool,
    max_reasons: int,
    paid: float = 0.0,
) -> list[Reason]:
    """Up to ``max_reasons`` reasons, strongest first, one per reason code.

    ``not_fraud`` is ``NO_RISK_SIGNAL`` alone, whatever the contributions. A flagged transaction
    with no contribution worth naming, or with none at all (the predictor did not explain it),
    gets ``MODEL_BASELINE``.
    """
    if label == "not_fraud":
        return [NO_RISK_REASON]
    reasons: list[Reason] = []
    if contributions is not None:
        ranked = sorted(
            (i for i, c in enumerate(contributions[: len(feature_names)]) if c > MIN_CONTRIBUTION),
            key=lambda i: -contributions[i],
        )
        seen: set[str] = set()
        for i in ranked:
            if len(reasons) >= max_reasons:
                break
            ctx = Context(
                currency=currency,
                paid=paid,
                device_present=device_present,
                raising=contributions[i] > 0,
            )
            code, text = describe(feature_names[i], values[i], ctx)
            if code in seen:
                continue
            seen.add(code)
            reasons.append(
                Reason(
                    code=code,
                    text=text,
                    feature=feature_names[i],
                    value=values[i],
                    contribution=round(float(contributions[i]), 4),
                )
            )
    if not reasons:
        code, text = _MODEL_BASELINE
        reasons.append(Reason(code=code, text=text))
    return reasons
