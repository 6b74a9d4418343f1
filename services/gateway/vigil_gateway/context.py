"""What every stage of one scoring request may read: its id, its time limits, its deadline, and
how its decisions are kept. Made once per request by the pipeline; never changed after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Time limits of one request, in seconds; None means no limit."""

    budget: float | None
    encoder: float | None
    predictor: float | None


@dataclass(frozen=True)
class ScoringRequest:
    """One scoring request as the stages see it."""

    request_id: str
    rescore: bool
    """Score again and write over a stored decision (``?rescore=true``, ``no-cache``)."""
    limits: Limits
    deadline: float | None
    """When the budget runs out, on the event loop's clock (None: no budget)."""
    write_behind: bool
    """The decisions are written after the answer (a single transaction), not before it (a batch)."""
    key_id: str = "anonymous"
    """The caller's API key id (never the key), recorded with its decisions."""


@dataclass
class DecisionTrace:
    """What the pipeline saw on the way to a request's answers, for the record stage: the
    vectors the encoder gave (row ``i`` is the claim's transaction ``i``) and the time spent.
    Filled by the pipeline, never by a stage."""

    started: float
    """``time.perf_counter()`` when scoring began."""
    encoded: Any = None
    """The encoder's ``EncodedVectors``, when it answered."""
    encode_ms: float | None = None
    predict_ms: float | None = None
    finished: float | None = None
    """``time.perf_counter()`` when the answers were settled."""
