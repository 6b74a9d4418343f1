"""deploy/k8s, checked offline: every manifest validates against the Kubernetes schemas
(kubernetes-validate ships them), and the manifests agree with docker-compose.yml and the local
runner on images, commands, ports, environment names and probes (a drift test, itself tested on
a compose file changed under it)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s_validate

from vigil.runner import GRACEFUL_STOP_S, READY_PATH, service_specs
from vigil_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SERVICES = ("encoder", "predictor", "streamer", "gateway")
ONE_SHOT = ("features", "train")
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# the validator knows.
K8S_VERSIONS = ("1.32.0", k8s_validate.latest_version())
# Settings a cluster gets that the local stack leaves at their defaults.
K8S_ONLY_ENV = {"gateway": {"GATEWAY_ENVIRONMENT"}}


def load_manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


MANIFESTS = load_manifests()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def secret_env_names(container: dict[str, Any], manifests: list[dict[str, Any]]) -> set[str]:
    """The environment variables a container gets from Secrets."""
    secrets = by_kind(manifests, "Secret")
    names = {
        e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            names |= set(secrets[source["secretRef"]["name"]]["stringData"])
    return names


def env_names(container: dict[str, Any], manifests: list[dict[str, Any]]) -> set[str]:
    """Every environment variable a container gets: its own and its ConfigMaps' and Secrets'."""
    names = {e["name"] for e in container.get("env", [])}
    maps, secrets = by_kind(manifests, "ConfigMap"), by_kind(manifests, "Secret")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(maps[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            names |= set(secrets[source["secretRef"]["name"]]["stringData"])
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]["stringData"], e
    return names


def compose_health(service: dict[str, Any]) -> tuple[str, str]:
    """The scheme (HTTP or HTTPS) and path of compose's healthcheck."""
    test = " ".join(service["healthcheck"]["test"])
    scheme, path = re.search(r"(https?)://127\.0\.0\.1:\d+(/[\w/]*)", test).groups()
    return scheme.upper(), path


def compose_health_path(service: dict[str, Any]) -> str:
    return compose_health(service)[1]


def drift(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> list[str]:
    """Where the manifests and compose (and the runner) disagree; empty when they agree."""
    problems: list[str] = []
    services = compose["services"]
    # The runner serves TLS when given a pair, as compose does (the names are then the same).
    gateway_env = services["gateway"]["environment"]
    tls = (
        (gateway_env["GATEWAY_TLS_CERTFILE"], gateway_env["GATEWAY_TLS_KEYFILE"])
        if "GATEWAY_TLS_CERTFILE" in gateway_env
        else None
    )
    runner = {
        s.name: s
        for s in service_specs("r", {"encoder": "e", "predictor": "p"}, "/m", "/s", tls=tls)
    }
    maps = by_kind(manifests, "ConfigMap")
    deployments = by_kind(manifests, "Deployment")
    k8s_services = by_kind(manifests, "Service")
    for name in SERVICES:
        svc, spec = services[name], runner[name]
        if name not in deployments:
            problems.append(f"{name}: no Deployment")
            continue
        (container,) = pod_spec(deployments[name])["containers"]
        if container["image"] != svc["image"]:
            problems.append(f"{name}: image {container['image']} != compose's {svc['image']}")
        if container["command"] != svc["command"] or svc["command"] != spec.command(
            "0.0.0.0", spec.port
        ):
            problems.append(f"{name}: command differs from compose's or the runner's")
        ports = [p["containerPort"] for p in container["ports"]]
        if ports != [spec.port] or str(spec.port) not in svc["command"]:
            problems.append(f"{name}: container ports {ports} != the runner's {spec.port}")
        service_ports = [
            p["port"] for p in k8s_services.get(name, {"spec": {"ports": []}})["spec"]["ports"]
        ]
        if service_ports != [spec.port]:
            problems.append(f"{name}: Service ports {service_ports} != {spec.port}")
        names = env_names(container, manifests)
        want = set(svc["environment"]) | K8S_ONLY_ENV.get(name, set())
        if names != want or set(svc["environment"]) != set(spec.env):
            problems.append(
                f"{name}: env {sorted(names ^ want)} only on one side "
                f"(compose {sorted(svc['environment'])}, runner {sorted(spec.env)})"
            )
        # Settings (not credentials) have compose's values: paths, URLs, names.
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                for key, value in maps[source["configMapRef"]["name"]]["data"].items():
                    if key in svc["environment"] and value != str(svc["environment"][key]):
                        problems.append(
                            f"{name}: {key}={value} != compose's {svc['environment'][key]}"
                        )
        ready = container["readinessProbe"]["httpGet"]["path"]
        if not ready == compose_health_path(svc) == READY_PATH[name]:
            problems.append(
                f"{name}: readiness {ready} != compose's {compose_health_path(svc)} "
                f"/ the runner's {READY_PATH[name]}"
            )
        if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
            problems.append(f"{name}: liveness is not /healthz")
        # A service with a certificate speaks only HTTPS: every probe uses it, as compose's does.
        scheme = "HTTPS" if any(k.endswith("_TLS_CERTFILE") for k in spec.env) else "HTTP"
        probe_schemes = {
            container[p]["httpGet"].get("scheme", "HTTP")
            for p in ("readinessProbe", "livenessProbe", "startupProbe")
            if p in container
        }
        if probe_schemes != {scheme} or compose_health(svc)[0] != scheme:
            problems.append(
                f"{name}: probes over {sorted(probe_schemes)}, compose's over "
                f"{compose_health(svc)[0]}, the service speaks {scheme}"
            )
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])} - {"/tmp"}
        wanted = {v.split(":")[1] for v in svc.get("volumes", [])}
        if mounts != wanted:
            problems.append(f"{name}: mounts {sorted(mounts)} != compose's {sorted(wanted)}")
    jobs = by_kind(manifests, "Job")
    for name in ONE_SHOT:
        if name not in jobs:
            problems.append(f"{name}: no Job")
            continue
        (container,) = pod_spec(jobs[name])["containers"]
        if container["command"] != services[name]["command"]:
            problems.append(f"{name}: command differs from compose's")
        if container["image"] != services[name]["image"]:
            problems.append(
                f"{name}: image {container['image']} != compose's {services[name]['image']}"
            )
        names = env_names(container, manifests)
        if names != set(services[name]["environment"]):
            problems.append(
                f"{name}: env {sorted(names ^ set(services[name]['environment']))} only on one side"
            )
        mounts = {m["mountPath"] for m in container["volumeMounts"]} - {"/tmp", "/home/vigil"}
        if mounts != {v.split(":")[1] for v in services[name]["volumes"]}:
            problems.append(f"{name}: mounts differ from compose's")
    redis = deployments.get("redis")
    if redis is None or pod_spec(redis)["containers"][0]["image"] != services["redis"]["image"]:
        problems.append("redis: image differs from compose's")
    if redis is not None:
        (container,) = pod_spec(redis)["containers"]
        if container["command"] != services["redis"]["command"]:
            problems.append("redis: command differs from compose's (persistence, protected mode)")
        # compose keeps Redis's data on a named volume; here on a claim, not an emptyDir.
        volumes = {v["name"]: v for v in pod_spec(redis)["volumes"]}
        mounts = {
            m["mountPath"]
            for m in container.get("volumeMounts", [])
            if "persistentVolumeClaim" in volumes[m["name"]]
        }
        if mounts != {v.split(":")[1] for v in services["redis"].get("volumes", [])}:
            problems.append(f"redis: claims mounted at {sorted(mounts)}, compose's volumes differ")
    return problems


def test_every_manifest_is_listed_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    assert len(MANIFESTS) > 20
    for manifest in MANIFESTS:
        # Strict: a misspelt or misplaced field is an error, not a field Kubernetes drops.
        k8s_validate.validate(manifest, version, strict=True)


def test_the_manifests_agree_with_compose_and_the_runner():
    assert drift(COMPOSE, MANIFESTS) == []


@pytest.mark.parametrize(
    "change",
    [
        ("image", lambda c: c["services"]["encoder"].update(image="vigil-encoder:2")),
        ("port", lambda c: c["services"]["predictor"]["command"].__setitem__(-5, "8012")),
        ("env", lambda c: c["services"]["gateway"]["environment"].update(GATEWAY_MAX_BATCH="10")),
        (
            "probe",
            lambda c: c["services"]["encoder"]["healthcheck"].update(
                test=["CMD", "curl", "http://127.0.0.1:8001/healthz"]
            ),
        ),
        ("job", lambda c: c["services"]["train"].update(command=["vigil", "train", "--seed", "3"])),
        (
            "value",
            lambda c: c["services"]["gateway"]["environment"].update(GATEWAY_SAMPLES_PATH="/x"),
        ),
        (
            "tls",
            lambda c: [
                c["services"]["gateway"]["environment"].pop(k)
                for k in ("GATEWAY_TLS_CERTFILE", "GATEWAY_TLS_KEYFILE")
            ],
        ),
        ("redis", lambda c: c["services"]["redis"]["command"].__setitem__(2, "no")),
    ],
    ids=lambda change: change[0] if isinstance(change, tuple) else "",
)
def test_the_drift_check_fails_when_compose_changes(change):
    compose = copy.deepcopy(COMPOSE)
    change[1](compose)
    assert drift(compose, MANIFESTS), "a compose change the manifests do not follow must be caught"


def test_the_drift_check_fails_when_a_manifest_changes():
    manifests = copy.deepcopy(MANIFESTS)
    by_kind(manifests, "ConfigMap")["vigil-encoder"]["data"]["ENCODER_SPEC_FILE"] = "/x"
    assert any("encoder: env" in p for p in drift(COMPOSE, manifests))


def test_every_env_name_is_a_setting_of_its_service():
    from vigil_encoder.settings import EncoderSettings
    from vigil_predictor.settings import PredictorSettings
    from vigil_streamer.settings import StreamerSettings

    settings = {
        "encoder": EncoderSettings,
        "predictor": PredictorSettings,
        "streamer": StreamerSettings,
        "gateway": GatewaySettings,
    }
    deployments = by_kind(MANIFESTS, "Deployment")
    for name, cls in settings.items():
        (container,) = pod_spec(deployments[name])["containers"]
        prefix = cls.model_config["env_prefix"]
        fields = {prefix + f.upper() for f in cls.model_fields}
        assert env_names(container, MANIFESTS) <= fields, name
        # The values are valid settings once the Secrets hold real values: the manifests ship
        # placeholders (test_the_secrets_are_placeholders_a_production_gateway_refuses), and the
        # production gateway refuses to start on the empty key secret, so each Secret-sourced
        # setting gets a stand-in here.
        config = by_kind(MANIFESTS, "ConfigMap").get(f"vigil-{name}")  # the streamer has none
        values = dict(config["data"]) if config else {}
        values |= {k: f"stand-in-{k.lower()}" for k in secret_env_names(container, MANIFESTS)}
        cls(**{k[len(prefix) :].lower(): v for k, v in values.items()})


def test_the_secrets_are_placeholders_a_production_gateway_refuses():
    """No real credential is committed: every Secret value is empty, an obvious REPLACE-ME or a
    password-less address of the in-namespace Redis; and the gateway, as shipped, does not start
    (placeholder internal token, no key secret), so nobody runs it on a published one by
    mistake."""
    secrets = by_kind(MANIFESTS, "Secret")
    for secret in secrets.values():
        for key, value in secret["stringData"].items():
            assert (
                value == ""
                or value.startswith("REPLACE-ME")
                or re.fullmatch(r"(redis://)?redis:6379(/0)?", value)
            ), (secret["metadata"]["name"], key)
    # An empty internal token would switch the encoder's and the predictor's check off.
    assert secrets["vigil-internal-token"]["stringData"]["token"]
    (container,) = pod_spec(by_kind(MANIFESTS, "Deployment")["gateway"])["containers"]
    shipped = dict(by_kind(MANIFESTS, "ConfigMap")["vigil-gateway"]["data"])
    for e in container["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        shipped[e["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    as_settings = {k.removeprefix("GATEWAY_").lower(): v for k, v in shipped.items()}
    with pytest.raises(ValueError, match="placeholder"):
        GatewaySettings(**as_settings)
    as_settings["internal_token"] = "a-real-token-of-32-characters-00"
    with pytest.raises(ValueError, match="auth_secret must be set"):
        GatewaySettings(**as_settings)


def test_the_gateway_serves_https_with_the_tls_secrets_pair():
    pod = pod_spec(by_kind(MANIFESTS, "Deployment")["gateway"])
    (container,) = pod["containers"]
    data = by_kind(MANIFESTS, "ConfigMap")["vigil-gateway"]["data"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret:
            assert mount["readOnly"] is True
            secret_data = by_kind(MANIFESTS, "Secret")[secret["secretName"]]
            assert secret_data["type"] == "kubernetes.io/tls"
            files |= {
                f"{mount['mountPath']}/{item['path']}": item["key"] for item in secret["items"]
            }
    assert files[data["GATEWAY_TLS_CERTFILE"]] == "tls.crt"
    assert files[data["GATEWAY_TLS_KEYFILE"]] == "tls.key"
    service = by_kind(MANIFESTS, "Service")["gateway"]
    assert [p["appProtocol"] for p in service["spec"]["ports"]] == ["https"]


def test_the_gateway_reaches_the_services_by_their_service_names():
    data = by_kind(MANIFESTS, "ConfigMap")["vigil-gateway"]["data"]
    services = by_kind(MANIFESTS, "Service")
    for name in ("encoder", "predictor"):
        port = services[name]["spec"]["ports"][0]["port"]
        assert data[f"GATEWAY_{name.upper()}_URL"] == f"http://{name}:{port}"


def test_every_pod_runs_unprivileged_with_a_read_only_root_and_bounded_resources():
    workloads = [m for m in MANIFESTS if m["kind"] in {"Deployment", "Job", "CronJob"}]
    assert (
        len(workloads) == 8
    )  # redis, encoder, predictor, streamer, gateway; features, train; the CronJob
    for workload in workloads:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_each_service_scales_and_survives_disruption():
    deployments = by_kind(MANIFESTS, "Deployment")
    hpas, pdbs = (
        by_kind(MANIFESTS, "HorizontalPodAutoscaler"),
        by_kind(MANIFESTS, "PodDisruptionBudget"),
    )
    for name in SERVICES:
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
        assert hpas[name]["spec"]["minReplicas"] >= 2
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_outside_traffic_reaches_only_the_gateway():
    policies = by_kind(MANIFESTS, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert (
        deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    )
    open_to_all = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in policies.values()
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule
    }
    assert open_to_all == {"gateway"}
    exposed = {
        name
        for name, s in by_kind(MANIFESTS, "Service").items()
        if s["spec"].get("type", "ClusterIP") != "ClusterIP"
    }
    assert exposed == {"gateway"} == {n for n, s in COMPOSE["services"].items() if s.get("ports")}


def test_every_pod_given_a_redis_url_is_let_into_redis():
    """Ingress is denied by default: a pod that is given a Redis URL must be one the policies
    let into the Redis pod (the streamer was not, and would never have consumed)."""
    redis_labels = by_kind(MANIFESTS, "Deployment")["redis"]["spec"]["template"]["metadata"]
    allowed = [
        peer["podSelector"]["matchLabels"]
        for policy in by_kind(MANIFESTS, "NetworkPolicy").values()
        if policy["spec"]["podSelector"].get("matchLabels", {}).items()
        <= redis_labels["labels"].items()
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
    ]
    readers = 0
    for workload in (m for m in MANIFESTS if m["kind"] in {"Deployment", "Job", "CronJob"}):
        spec = workload["spec"]
        template = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)[
            "template"
        ]
        pod = template["spec"]
        names = set().union(
            *(env_names(c, MANIFESTS) for c in pod.get("initContainers", []) + pod["containers"])
        )
        if not any("REDIS_URL" in n or n == "VIGIL_REDIS_CONNECTION_STRING" for n in names):
            continue
        readers += 1
        labels = template["metadata"]["labels"]
        assert any(peer.items() <= labels.items() for peer in allowed), workload["metadata"]
    assert readers == 6  # encoder, streamer, gateway; the Jobs features and train, the CronJob


def test_redis_urls_are_secrets_not_config():
    for cm in by_kind(MANIFESTS, "ConfigMap").values():
        assert not any("REDIS" in key for key in cm["data"]), cm["metadata"]["name"]


def test_incremental_materialization_is_scheduled_one_at_a_time():
    (cron,) = by_kind(MANIFESTS, "CronJob").values()
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod_spec(cron)["containers"]
    assert container["command"] == ["vigil", "materialize"]
    assert json.dumps(container["image"]) == json.dumps(COMPOSE["x-tools"]["image"])


def test_the_gateway_pod_is_given_the_time_its_stop_takes():
    """Requests in flight (at most ``GRACEFUL_STOP_S``), then the spooled decision events
    (``events_drain_timeout_s``), before the kubelet's SIGKILL."""
    pod = pod_spec(by_kind(MANIFESTS, "Deployment")["gateway"])
    needed = GRACEFUL_STOP_S + GatewaySettings.model_fields["events_drain_timeout_s"].default
    assert pod["terminationGracePeriodSeconds"] > needed
