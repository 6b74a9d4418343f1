"""What every stage of one scoring request may read: its id, its time limits, its deadline, and
how its decisions are kept. Made once per request by the pipeline; never changed after."""

from __future__ import annotations

from dataclasses import dataclass


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
