"""Stage *safeguards*: non-ML rules beside the model, which can only raise a label's caution.

The rules are data (``safeguards.toml`` in this package, or the file ``GATEWAY_SAFEGUARDS_PATH``
names), versioned, and checked against each transaction's feature vector before the model's
score is labelled: a rule asks for at least ``suspicious`` (or ``highly_suspicious``) when a
feature is above or below a bound, or outside the range of the model's training values (trees
saturate beyond it: 700, 1,500 and 50,000 EUR would all score alike). Postprocessing combines
the two: the more cautious label wins, the fired rules come first among the reasons, and every
answer names the rule set's version and the rules that fired.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vigil_contracts.api import Reason, SafeguardsRef
from vigil_contracts.feature_contract import short_name
from vigil_contracts.thresholds import Label
from vigil_gateway.encoder_client import EncodedVectors
from vigil_gateway.model_metadata import ModelMetadata

logger = logging.getLogger(__name__)

# How cautious each label a rule may ask for is (uncertain answers are left as they are).
CAUTION: dict[str, int] = {"not_fraud": 0, "suspicious": 1, "highly_suspicious": 2}


class Rule(BaseModel):
    """One safeguard: ``feature`` above ``above``, below ``below`` or outside the training range
    asks for at least ``at_least``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    feature: str = Field(min_length=1, description="The feature's short name (no view prefix).")
    text: str = Field(min_length=1, description="The reason's text; may use {value}.")
    at_least: Literal["suspicious", "highly_suspicious"]
    above: float | None = None
    below: float | None = None
    outside_training_range: bool = False

    @model_validator(mode="after")
    def _one_condition(self) -> Rule:
        if self.above is None and self.below is None and not self.outside_training_range:
            raise ValueError(f"rule {self.code}: needs above, below or outside_training_range")
        self.text.format(value=1.0)  # a broken template fails at start-up, not on a transaction
        return self


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_codes(self) -> RuleSet:
        codes = [r.code for r in self.rules]
        if len(set(codes)) != len(codes):
            raise ValueError("rule codes must be unique")
        return self


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rule set at ``path``, or the one shipped with the gateway."""
    text = (
        Path(path).read_text(encoding="utf-8")
        if path
        else (files("vigil_gateway").joinpath("safeguards.toml").read_text(encoding="utf-8"))
    )
    return RuleSet.model_validate(tomllib.loads(text))


@dataclass(frozen=True)
class Verdict:
    """What the rules say of one transaction where at least one fired."""

    ref: SafeguardsRef
    at_least: Label
    reasons: list[Reason]


@dataclass(frozen=True)
class Checked:
    """The rules' verdicts on a request's rows: ``verdicts`` where a rule fired, ``clear`` (one
    shared object) for the answers of the others."""

    clear: SafeguardsRef
    verdicts: dict[int, Verdict]

    def ref(self, row: int) -> SafeguardsRef:
        verdict = self.verdicts.get(row)
        return self.clear if verdict is None else verdict.ref


class Safeguards:
    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.clear = SafeguardsRef(version=rules.version)

    def __call__(
        self, encoded: EncodedVectors, rows: Sequence[int], meta: ModelMetadata
    ) -> Checked:
        """Every rule over ``rows`` of the vectors, with ``meta``'s training range."""
        position = {short_name(name): j for j, name in enumerate(encoded.feature_names)}
        fired: dict[int, list[tuple[Rule, float]]] = {}
        for rule in self.rules.rules:
            j = position.get(rule.feature)
            if j is None:
                continue  # the model has no such feature: the rule cannot apply
            low, high = _bounds(rule, meta.training_range.get(encoded.feature_names[j]))
            for i, value in zip(rows, _column(encoded, j, rows), strict=True):
                if value is not None and (value > high or value < low):  # NaN compares False
                    fired.setdefault(i, []).append((rule, value))
        return Checked(self.clear, {i: self._verdict(hits) for i, hits in fired.items()})

    def _verdict(self, hits: list[tuple[Rule, float]]) -> Verdict:
        return Verdict(
            ref=SafeguardsRef(version=self.rules.version, fired=[rule.code for rule, _ in hits]),
            at_least=max((rule.at_least for rule, _ in hits), key=CAUTION.__getitem__),
            reasons=[
                Reason(
                    code=rule.code,
                    text=rule.text.format(value=value),
                    feature=rule.feature,
                    value=value,
                )
                for rule, value in hits
            ],
        )


def _bounds(rule: Rule, training: tuple[float, float] | None) -> tuple[float, float]:
    low = rule.below if rule.below is not None else -math.inf
    high = rule.above if rule.above is not None else math.inf
    if rule.outside_training_range and training is not None:
        low, high = max(low, training[0]), min(high, training[1])
    return low, high


def _column(encoded: EncodedVectors, j: int, rows: Sequence[int]) -> list[float | None]:
    """Feature ``j`` of each of ``rows`` (None or NaN where missing)."""
    binary = encoded.binary
    if binary is not None:
        column = binary.values[j :: binary.width]
        return [column[i] for i in rows]
    return [encoded.rows[i].values[j] for i in rows]
