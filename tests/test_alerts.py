"""deploy/prometheus: the alerting rules checked and unit-tested by Prometheus' own ``promtool``
(each alert fires on the series that should fire it, after its ``for``, with its labels and
annotations, and stays quiet on look-alike series), the scrape config checked, and every metric
and label the rules read is one the services export (their metric registries). The rules loaded
by a real Prometheus scraping the running stack: tests/test_demo_burst.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is missing; install it: {INSTALL_HINT}", pytrace=False)
    return path


def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_the_rules_and_the_scrape_config_are_valid() -> None:
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(PROMETHEUS / "prometheus.yml")],
    ):
        done = subprocess.run(
            [promtool(), *args], check=False, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


# Each case: the alert, its input series (promtool's expanding notation, one sample a minute),
# when it is evaluated, and the labels and summary it must fire with (None: it must not fire).
G = 'job="vigil-gateway", instance="gateway:8000"'
S = 'job="vigil-streamer", instance="streamer:8003"'
SCORE = 'route="/v1/transactions/score", method="POST"'
CASES: list[tuple[str, dict[str, str], str, dict[str, str] | None, str | None]] = [
    (
        "VigilTargetDown",
        {'up{job="vigil-encoder", instance="encoder:8001"}': "1 1 0 0 0 0 0"},
        "5m",
        {"job": "vigil-encoder", "instance": "encoder:8001"},
        "vigil-encoder at encoder:8001 cannot be scraped",
    ),
    # Down for less than its 2 minutes: pending, not firing.
    ("VigilTargetDown", {'up{job="vigil-encoder", instance="e:1"}': "1 1 0 0"}, "3m", None, None),
    (
        "VigilServiceNotReady",
        {
            'vigil_encoder_ready{job="vigil-encoder", instance="encoder:8001"}': "1 1 0 0 0 0 0",
            'vigil_gateway_ready{job="vigil-gateway", instance="gateway:8000"}': "1 1 1 1 1 1 1",
        },
        "5m",
        {"job": "vigil-encoder", "instance": "encoder:8001"},
        "vigil-encoder at encoder:8001 is not ready",
    ),
    (  # not ready for a minute (a Redis failover): pending, not firing
        "VigilServiceNotReady",
        {'vigil_gateway_ready{job="vigil-gateway", instance="g:1"}': "1 1 0 0 1 1 1"},
        "5m",
        None,
        None,
    ),
    (
        "VigilStreamerNotReady",
        {'vigil_streamer_ready{job="vigil-streamer", instance="s:8003"}': "0 0 0 0 0 0 0 0"},
        "7m",
        {"job": "vigil-streamer", "instance": "s:8003"},
        "streamer s:8003 is not consuming",
    ),
    (
        "VigilNoModelReady",
        {
            'vigil_predictor_model_version_ready{job="vigil-predictor", instance="p:8002", '
            'model="fraud_detector", version="1"}': "1 1 0 0 0 0 0"
        },
        "5m",
        {"job": "vigil-predictor", "instance": "p:8002"},
        "predictor p:8002 serves no ready model version",
    ),
    (  # another version is ready: the predictor still serves
        "VigilNoModelReady",
        {
            'vigil_predictor_model_version_ready{job="vigil-predictor", instance="p:8002", '
            'model="fraud_detector", version="1"}': "1 1 0 0 0 0 0",
            'vigil_predictor_model_version_ready{job="vigil-predictor", instance="p:8002", '
            'model="fraud_detector", version="2"}': "0 1 1 1 1 1 1",
        },
        "5m",
        None,
        None,
    ),
    (
        "VigilDegradedAnswers",
        {
            f'vigil_gateway_decisions_total{{{G}, label="not_fraud", model_version="1"}}': "0+90x20",
            f'vigil_gateway_decisions_total{{{G}, label="uncertain", model_version="1"}}': "0+10x20",
            f'vigil_gateway_degraded_answers_total{{{G}, reason="ENCODER_TIMEOUT", '
            'model_version="1"}': "0+10x20",
        },
        "12m",
        {},
        "10% of decisions are degraded (uncertain)",
    ),
    (  # 2 %: under the 5 % bar
        "VigilDegradedAnswers",
        {
            f'vigil_gateway_decisions_total{{{G}, label="not_fraud", model_version="1"}}': "0+98x20",
            f'vigil_gateway_degraded_answers_total{{{G}, reason="ENCODER_TIMEOUT", '
            'model_version="1"}': "0+2x20",
        },
        "12m",
        None,
        None,
    ),
    (
        "VigilShedding",
        {f'vigil_gateway_refused_total{{{G}, reason="overloaded", key_id="k1"}}': "0+60x30"},
        "20m",
        {},
        "the gateways refuse 1 requests/s as overloaded",
    ),
    (  # refusals of bad keys are not overload
        "VigilShedding",
        {f'vigil_gateway_refused_total{{{G}, reason="unauthenticated", key_id="none"}}': "0+60x30"},
        "20m",
        None,
        None,
    ),
    (
        "VigilScoreLatencyHigh",
        {
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, {SCORE}, le="0.1"}}': "0x30",
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, {SCORE}, le="0.5"}}': "0+60x30",
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, {SCORE}, le="+Inf"}}': "0+60x30",
        },
        "20m",
        {},
        "p99 of /v1/transactions/score is 496ms",
    ),
    (  # slow batches are not the single-transaction route's tail
        "VigilScoreLatencyHigh",
        {
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, route="/v1/transactions/score-batch", '
            'method="POST", le="0.1"}': "0x30",
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, route="/v1/transactions/score-batch", '
            'method="POST", le="+Inf"}': "0+60x30",
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, {SCORE}, le="0.1"}}': "0+60x30",
            f'vigil_gateway_request_duration_seconds_bucket{{{G}, {SCORE}, le="+Inf"}}': "0+60x30",
        },
        "20m",
        None,
        None,
    ),
    (
        "VigilDecisionStoreErrors",
        {f'vigil_gateway_decision_store_total{{{G}, outcome="error"}}': "0+6x20"},
        "12m",
        {},
        "the gateways cannot read or write decisions in Redis",
    ),
    (
        "VigilModelMetadataUnreadable",
        {f"vigil_gateway_metadata_refresh_errors_total{{{G}}}": "0+1x30"},
        "20m",
        {"job": "vigil-gateway", "instance": "gateway:8000"},
        "gateway gateway:8000 cannot read the model's metadata",
    ),
    (
        "VigilDecisionEventsLost",
        {f'vigil_gateway_decision_events_total{{{G}, outcome="dropped"}}': "0 0 0 5 5 5"},
        "4m",
        {},
        "5 decision events were lost in 15 minutes",
    ),
    (  # sent events are the normal case
        "VigilDecisionEventsLost",
        {f'vigil_gateway_decision_events_total{{{G}, outcome="sent"}}': "0+100x10"},
        "8m",
        None,
        None,
    ),
    (
        "VigilDecisionEventsBacklog",
        {f"vigil_gateway_decision_events_spooled{{{G}}}": "0 5000 5000 5000 5000 5000"},
        "4m",
        {"instance": "gateway:8000"},
        "gateway gateway:8000 holds 5000 unsent decision events",
    ),
    (
        "VigilStreamerStalled",
        {
            f"vigil_streamer_lag_events{{{S}}}": "100x15",
            f"vigil_streamer_pending_events{{{S}}}": "0x15",
            f'vigil_streamer_events_total{{{S}, outcome="applied"}}': "5x15",
        },
        "12m",
        {},
        "the streamer applies no events while 100 wait",
    ),
    (  # a backlog worked off: not stalled
        "VigilStreamerStalled",
        {
            f"vigil_streamer_lag_events{{{S}}}": "100x15",
            f"vigil_streamer_pending_events{{{S}}}": "0x15",
            f'vigil_streamer_events_total{{{S}, outcome="applied"}}': "0+50x15",
        },
        "12m",
        None,
        None,
    ),
    (
        "VigilDecisionStreamNearlyFull",
        {
            f"vigil_streamer_lag_events{{{S}}}": "0+100x12",
            f"vigil_streamer_pending_events{{{S}}}": "1000x12",
            f"vigil_gateway_decision_events_stream_maxlen{{{G}}}": "2000x12",
        },
        "10m",
        {},
        "the streamer is 2000 decision events behind, over half the stream's length",
    ),
    (  # behind, but by less than half of what the gateways keep
        "VigilDecisionStreamNearlyFull",
        {
            f"vigil_streamer_lag_events{{{S}}}": "0+100x12",
            f"vigil_streamer_pending_events{{{S}}}": "1000x12",
            f"vigil_gateway_decision_events_stream_maxlen{{{G}}}": "5000x12",
        },
        "10m",
        None,
        None,
    ),
    (
        "VigilFeaturesLagBehindDecisions",
        {
            f'vigil_streamer_freshness_seconds_bucket{{{S}, le="1.0"}}': "0x30",
            f'vigil_streamer_freshness_seconds_bucket{{{S}, le="10.0"}}': "0+60x30",
            f'vigil_streamer_freshness_seconds_bucket{{{S}, le="+Inf"}}': "0+60x30",
        },
        "20m",
        {},
        "p99 from decision to fresh features is 9.91s",
    ),
    (
        "VigilStreamerErrors",
        {f"vigil_streamer_errors_total{{{S}}}": "0+1x20"},
        "12m",
        {},
        "streamer batches keep failing",
    ),
    (
        "VigilDeadLetters",
        {f'vigil_streamer_events_total{{{S}, outcome="dead_letter"}}': "0 0 3 3"},
        "3m",
        {},
        "3 decision events went to the dead-letter stream",
    ),
    (
        "VigilOnlineFeaturesStale",
        {
            'vigil_encoder_feature_view_age_seconds{job="vigil-encoder", instance="e:8001", '
            'feature_view="card_stats"}': "4000+60x20"
        },
        "12m",
        {"feature_view": "card_stats"},
        "online features of card_stats are 1h 18m 40s old",
    ),
    (  # materialized every 15 minutes: fresh enough
        "VigilOnlineFeaturesStale",
        {
            'vigil_encoder_feature_view_age_seconds{job="vigil-encoder", instance="e:8001", '
            'feature_view="card_stats"}': "0+60x14 0+60x14"
        },
        "25m",
        None,
        None,
    ),
]


def test_every_alert_has_a_firing_case() -> None:
    fired = {alert for alert, _, _, labels, _ in CASES if labels is not None}
    assert fired == set(rules())


def _unit_tests(tmp_path: Path) -> Path:
    by_name = rules()
    tests = []
    for alert, series, at, labels, summary in CASES:
        expected = []
        if labels is not None:
            rule = by_name[alert]
            expected.append(
                {
                    "exp_labels": {**rule["labels"], **labels},
                    "exp_annotations": {
                        "summary": summary,
                        "description": rule["annotations"]["description"],
                    },
                }
            )
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        )
    path = tmp_path / "alerts.test.yml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests})
    )
    return path


def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", str(_unit_tests(tmp_path))],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _exported() -> dict[str, set[str]]:
    """Every sample name the services export -> its label names (Prometheus adds job, instance)."""
    from vigil_encoder.metrics import EncoderMetrics
    from vigil_gateway.metrics import GatewayMetrics
    from vigil_predictor.metrics import PredictorMetrics
    from vigil_streamer.metrics import StreamerMetrics

    names: dict[str, set[str]] = {"up": set()}
    for metrics in (GatewayMetrics(), EncoderMetrics(), PredictorMetrics(), StreamerMetrics()):
        for collector in list(metrics.registry._collector_to_names):
            labels = set(getattr(collector, "_labelnames", ()))
            kind = getattr(collector, "_type", "")
            base = getattr(collector, "_name", "")
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_count", "_sum"],
                "gauge": [""],
            }[kind]
            for suffix in suffixes:
                names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def test_every_metric_and_label_the_rules_read_is_exported() -> None:
    exported = _exported()
    selector = re.compile(r"\b(vigil_[a-z_]+|up)\b(?:\{([^}]*)\})?")
    grouping = re.compile(r"\bby \(([^)]*)\)")
    for alert, rule in rules().items():
        expr = rule["expr"]
        read: set[str] = set()
        for name, matchers in selector.findall(expr):
            assert name in exported, f"{alert}: {name} is exported by no service"
            used = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
            assert used <= exported[name] | {"job", "instance"}, (alert, name, used)
            read |= exported[name]
        for group in grouping.findall(expr):
            by = {label.strip() for label in group.split(",")}
            assert by <= read | {"job", "instance"}, (alert, by)
        # Templated labels must survive the expression's aggregation.
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in read | {"job", "instance"}, (alert, label)
