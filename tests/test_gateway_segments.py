"""Per-segment thresholds, served: a transaction is labelled by its channel's own pair where the
scoring version has one (``segment_thresholds.channel`` in its V2 metadata), by the global pair
otherwise, alike in ``/v1/transactions/score`` and ``/score-batch`` and on every path an answer
can take (below every pair's ``suspicious``; below its own pair's only; labelled in full).

The stand-ins of ``test_gateway`` (real ASGI apps, a real Redis as the decision store); the
scores below are the stand-in predictor's exact ones. A last test runs the real predictor app
on an artifact written with segment thresholds.
"""

from __future__ import annotations

from typing import Any

import pytest

import test_gateway
from test_gateway import (
    FEATURES,
    MODEL,
    SERVICE,
    EncoderStandIn,
    PredictorStandIn,
    Stack,
    codes,
    fraud_txn,
    gap_txn,
    gateway,
    on_real_predictor,
    real_predictor_app,
    suspicious_txn,
    txn,
)
from vigil_contracts.segments import Labelling, unservable
from vigil_contracts.thresholds import label_for_score
from vigil_gateway.model_metadata import ModelMetadata

redis_url = test_gateway.redis_url  # the session fixture, shared

GLOBAL = test_gateway.THRESHOLDS["3"]  # suspicious 0.5, highly_suspicious 0.8
SEGMENTS = {
    "channel": {
        "ecom": {"suspicious": 0.4, "highly_suspicious": 0.45},
        "pos": {"suspicious": 0.55, "highly_suspicious": 0.999},
    }
}  # mobile has none: the global pair labels it
LOWEST = 0.4  # ecom's: the lowest suspicious threshold that can apply


def cases() -> list[tuple[dict[str, Any], str, str]]:
    """(transaction, its label, the label the global pair would give), one per path."""
    return [
        # 0.389: below every pair's suspicious (the first not_fraud shortcut).
        (txn(amount=300.0, country="FR", channel="ecom"), "not_fraud", "not_fraud"),
        # 0.438 and 0.4875: flagged by ecom's lower pair; the global pair would clear them.
        (suspicious_txn(amount=350.0, channel="ecom"), "suspicious", "not_fraud"),
        (gap_txn(channel="ecom"), "highly_suspicious", "not_fraud"),
        # 0.537: above the lowest bound, below pos's own suspicious (the second shortcut).
        (suspicious_txn(channel="pos"), "not_fraud", "suspicious"),
        # 0.995: pos's highly_suspicious is 0.999.
        (fraud_txn(channel="pos"), "suspicious", "highly_suspicious"),
        # mobile has no pair of its own: the global one, whatever ecom's or pos's would say.
        (gap_txn(channel="mobile"), "not_fraud", "not_fraud"),
        (suspicious_txn(channel="mobile"), "suspicious", "suspicious"),
    ]


@pytest.fixture
async def segmented(redis_url: str) -> Any:
    async with gateway(redis_url, predictor=PredictorStandIn(segment_thresholds=SEGMENTS)) as s:
        await s.wait_for_metadata()
        yield s


def check(answer: dict[str, Any], label: str) -> None:
    assert answer["label"] == label, answer
    assert answer["degraded"] is False
    if label == "not_fraud":
        assert codes(answer) == ["NO_RISK_SIGNAL"]
    else:  # explained: the predictor was asked for contributions down to the lowest bound
        assert answer["reasons"] and all(r["contribution"] > 0 for r in answer["reasons"])


async def test_the_segment_thresholds_reach_the_gateway(segmented: Stack) -> None:
    meta = segmented.app.state.services.catalog.current
    assert {
        c: {v: p.as_mapping() for v, p in ps.items()} for c, ps in meta.segment_thresholds.items()
    } == SEGMENTS
    assert meta.labelling.lowest_suspicious == LOWEST


async def test_a_single_transaction_is_labelled_by_its_channels_pair(segmented: Stack) -> None:
    for body, label, by_global in cases():
        answer = (await segmented.score(body)).json()
        assert label_for_score(answer["score"], GLOBAL) == by_global  # the pair decides
        check(answer, label)
    for call in segmented.predictor.calls:
        assert call["body"]["parameters"]["contributions_min_score"] == LOWEST


async def test_a_batch_labels_each_item_by_its_channels_pair(segmented: Stack) -> None:
    items = [body for body, _, _ in cases()]
    response = await segmented.client.post(
        "/v1/transactions/score-batch", json={"transactions": items}
    )
    assert response.status_code == 200, response.text
    results = [r["result"] for r in response.json()["results"]]
    for answer, (_, label, by_global) in zip(results, cases(), strict=True):
        assert label_for_score(answer["score"], GLOBAL) == by_global
        check(answer, label)
    [call] = segmented.predictor.calls
    assert call["body"]["parameters"]["contributions_min_score"] == LOWEST
    # The batch stored its decisions: a retry of each item answers the same label.
    for item, answer in zip(items, results, strict=True):
        replay = (await segmented.score(item)).json()
        assert replay["cached"] is True and replay["label"] == answer["label"]


async def test_without_segment_thresholds_the_global_pair_labels_everything(
    redis_url: str,
) -> None:
    for served in (None, {}):  # not served (an older predictor or model), or served empty
        async with gateway(
            redis_url, predictor=PredictorStandIn(segment_thresholds=served)
        ) as stack:
            await stack.wait_for_metadata()
            meta = stack.app.state.services.catalog.current
            assert meta.segment_thresholds == {}
            assert meta.labelling.lowest_suspicious == GLOBAL["suspicious"]
            items = [body for body, _, _ in cases()]  # fresh ids
            single = (await stack.score(items[0])).json()
            batch = (
                await stack.client.post(
                    "/v1/transactions/score-batch", json={"transactions": items[1:]}
                )
            ).json()
            answers = [single, *(r["result"] for r in batch["results"])]
            for answer, (_, _, by_global) in zip(answers, cases(), strict=True):
                check(answer, by_global)
            for call in stack.predictor.calls:
                assert call["body"]["parameters"]["contributions_min_score"] == 0.5


async def test_when_every_channel_has_its_own_pair_the_global_one_bounds_nothing(
    redis_url: str,
) -> None:
    """The global pair applies to no transaction then: a 0.4875 on ecom is not_fraud by ecom's
    pair although the global one would flag it, and contributions start at the lowest own pair."""
    own = {"suspicious": 0.6, "highly_suspicious": 0.9}
    predictor = PredictorStandIn(
        segment_thresholds={
            "channel": {"ecom": own, "pos": own, "mobile": {**own, "suspicious": 0.7}}
        }
    )
    async with gateway(redis_url, predictor=predictor) as stack:
        await stack.wait_for_metadata()
        answer = (await stack.score(gap_txn(channel="ecom"))).json()
        flagged = (await stack.score(suspicious_txn(amount=500.0, channel="pos"))).json()
    assert answer["label"] == "not_fraud" and codes(answer) == ["NO_RISK_SIGNAL"]
    assert flagged["label"] == "not_fraud"  # 0.587 < pos's 0.6 (global: suspicious)
    assert [c["body"]["parameters"]["contributions_min_score"] for c in predictor.calls] == [
        0.6,
        0.6,
    ]


def test_segments_the_gateway_cannot_apply_are_refused() -> None:
    body = {
        "name": MODEL,
        "parameters": {
            "version": "9",
            "feature_service": SERVICE,
            "feature_names": FEATURES,
            "feature_contract": test_gateway.CONTRACT,
            "thresholds": GLOBAL,
        },
    }
    assert ModelMetadata.from_v2(body).labelling.pair_for({"channel": "ecom"}) == GLOBAL
    for bad in (
        {"country": {"DE": GLOBAL}},  # not a field thresholds are segmented by
        {"channel": {"atm": GLOBAL}},  # no transaction has that channel
        {"channel": {"pos": {"suspicious": 0.9, "highly_suspicious": 0.5}}},  # out of order
    ):
        with pytest.raises(ValueError):
            ModelMetadata.from_v2(
                {**body, "parameters": {**body["parameters"], "segment_thresholds": bad}}
            )


def test_the_labelling_rule() -> None:
    ecom = {"suspicious": 0.2, "highly_suspicious": 0.3}
    labelling = Labelling(GLOBAL, {"channel": {"ecom": ecom}})
    assert labelling.pair_for({"channel": "ecom"}) == ecom
    assert labelling.pair_for({"channel": "pos"}) == GLOBAL
    assert labelling.pair_for({}) == GLOBAL
    assert labelling.label(0.25, {"channel": "ecom"}) == "suspicious"
    assert labelling.label(0.25, {"channel": "mobile"}) == "not_fraud"
    assert labelling.lowest_suspicious == 0.2
    assert Labelling(GLOBAL).lowest_suspicious == 0.5
    # Every channel covered: the global pair labels nothing and bounds nothing.
    covered = {
        "channel": {
            c: {"suspicious": 0.7, "highly_suspicious": 0.9} for c in ("pos", "ecom", "mobile")
        }
    }
    assert (
        Labelling({"suspicious": 0.1, "highly_suspicious": 0.2}, covered).lowest_suspicious == 0.7
    )
    assert unservable(covered) is None
    assert "at most one" in (unservable({"channel": {}, "currency": {}}) or "")
    with pytest.raises(ValueError, match="no transaction has channel atm"):
        Labelling(GLOBAL, {"channel": {"atm": ecom}})


async def test_with_the_real_predictor_serving_segment_thresholds(redis_url: str, tmp_path) -> None:
    """An artifact written with ``segment_thresholds``: the real predictor app serves them in
    its V2 metadata and the gateway labels by them. ecom's pair flags every score, pos's none."""
    thresholds = {"suspicious": 0.3, "highly_suspicious": 0.7}
    segments = {
        "channel": {
            "ecom": {"suspicious": 0.0, "highly_suspicious": 0.0},
            "pos": {"suspicious": 1.0, "highly_suspicious": 1.0},
        }
    }
    _, predictor_app = real_predictor_app(
        tmp_path, with_missing=False, thresholds=thresholds, segment_thresholds=segments
    )
    bodies = [
        body(channel=channel)
        for channel in ("ecom", "pos", "mobile")
        for body in (txn, suspicious_txn, fraud_txn)
    ]
    async with on_real_predictor(redis_url, EncoderStandIn().app, predictor_app) as client:
        single = (await client.post("/v1/transactions/score", json=bodies[0])).json()
        batch = (
            await client.post("/v1/transactions/score-batch", json={"transactions": bodies[1:]})
        ).json()
    answers = [single, *(r["result"] for r in batch["results"])]
    by_channel: dict[str, set[str]] = {}
    for body, answer in zip(bodies, answers, strict=True):
        assert answer["degraded"] is False, answer
        by_channel.setdefault(body["channel"], set()).add(answer["label"])
        if body["channel"] == "mobile":
            assert answer["label"] == label_for_score(answer["score"], thresholds)
    assert by_channel["ecom"] == {"highly_suspicious"}
    assert by_channel["pos"] == {"not_fraud"}
    # The global pair would have labelled some of them otherwise.
    scores = {
        channel: [
            a["score"] for b, a in zip(bodies, answers, strict=True) if b["channel"] == channel
        ]
        for channel in ("ecom", "pos")
    }
    assert min(scores["ecom"]) < thresholds["highly_suspicious"] <= max(scores["pos"]), scores
