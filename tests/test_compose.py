"""docker-compose.yml and the Dockerfiles, checked statically (no Docker engine runs here):
the file parses, services agree with the local runner, entry modules exist, images stay slim.
The stack itself is run for real by tests/test_docker_stack.py (``pytest -m docker``)."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from vigil.runner import GRACEFUL_STOP_S, service_specs
from vigil_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
RUNNER = {
    s.name: s
    for s in service_specs(
        "redis://x",
        {"encoder": "e", "predictor": "p"},
        "/m",
        "/s",
        tls=("/certs/cert.pem", "/certs/key.pem"),
    )
}
DOCKERFILES = {
    "encoder": ROOT / "services/encoder/Dockerfile",
    "predictor": ROOT / "services/predictor/Dockerfile",
    "gateway": ROOT / "services/gateway/Dockerfile",
    "streamer": ROOT / "services/streamer/Dockerfile",
}
PYTHON_DEFAULT = "python:3.11-slim"


def test_compose_declares_the_stack():
    assert {"redis", "features", "train", "encoder", "predictor", "gateway", "streamer"} <= set(
        SERVICES
    )
    assert "healthcheck" in SERVICES["redis"]
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"gateway"}, "only the gateway is public"


@pytest.mark.parametrize("name", sorted(RUNNER))
def test_compose_runs_the_runners_command_and_env(name):
    svc, spec = SERVICES[name], RUNNER[name]
    assert svc["command"] == spec.command("0.0.0.0", spec.port)
    assert set(svc["environment"]) == set(spec.env)
    assert "healthcheck" in svc
    for dep, cond in svc["depends_on"].items():
        assert dep in SERVICES
        assert cond["condition"] in {"service_healthy", "service_completed_successfully"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_builds_only_its_service(name):
    text = DOCKERFILES[name].read_text()
    assert SERVICES[name]["build"]["dockerfile"] == str(DOCKERFILES[name].relative_to(ROOT))
    assert re.search(r"^USER\s+(?!root)\S+", text, re.MULTILINE), "runs as a non-root user"
    assert "HEALTHCHECK" in text
    assert f"services/{name}" in text
    assert set(re.findall(r"\blibs/(\w+)", text)) == {"contracts", "servicekit"}
    others = {"encoder", "predictor", "gateway", "streamer"} - {name}
    for other in others:
        assert f"services/{other}" not in text
    assert "constraints.txt" in text
    factory = RUNNER[name].factory.split(":")[0]
    assert importlib.util.find_spec(factory) is not None, f"{factory} must exist"
    assert RUNNER[name].factory in text
    # The image's own command is the runner's (and compose's): the same server flags, so that a
    # container started without compose logs one JSON access line per request, not two.
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.MULTILINE).group(1))
    assert cmd == RUNNER[name].command("0.0.0.0", RUNNER[name].port)


def _deps(pyproject: Path) -> str:
    return " ".join(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def test_service_images_install_only_what_they_need():
    gateway = _deps(ROOT / "services/gateway/pyproject.toml")
    assert "feast" not in gateway and "xgboost" not in gateway
    encoder = _deps(ROOT / "services/encoder/pyproject.toml")
    assert "feast" not in encoder and "xgboost" not in encoder
    predictor = _deps(ROOT / "services/predictor/pyproject.toml")
    assert "feast" not in predictor and "xgboost-cpu" in predictor
    streamer = _deps(ROOT / "services/streamer/pyproject.toml")
    assert "feast" not in streamer and "xgboost" not in streamer
    kit = _deps(ROOT / "libs/servicekit/pyproject.toml")
    assert "feast" not in kit and "xgboost" not in kit
    for service in ("gateway", "encoder", "predictor", "streamer"):
        assert "vigil-servicekit" in _deps(ROOT / f"services/{service}/pyproject.toml")
    contracts = _deps(ROOT / "libs/contracts/pyproject.toml")
    # pydantic, and the zone data zoneinfo reads for local time (slim images have none).
    assert contracts.split() == ["pydantic>=2.7,<3", "tzdata>=2024.1"]


def test_one_shot_services_use_the_tools_image_and_the_cli():
    for name in ("features", "train"):
        svc = SERVICES[name]
        assert svc["build"]["dockerfile"] == "docker/tools.Dockerfile"
        assert "vigil" in " ".join(svc["command"])
    assert (
        SERVICES["train"]["depends_on"]["features"]["condition"] == "service_completed_successfully"
    )


def test_compose_file_works_with_compose_1_29_and_v2():
    # compose 1.29 (Debian's docker-compose) refuses a top-level `name:`; the project name comes
    # from the folder or COMPOSE_PROJECT_NAME.
    assert "name" not in COMPOSE
    assert not re.search(r"^name\s*:", COMPOSE_TEXT, re.MULTILINE)
    assert "version" not in COMPOSE


def _default(value: str, variable: str) -> str:
    """The default of a compose ``${VARIABLE:-default}`` value."""
    match = re.fullmatch(r"\$\{" + variable + r":-([^}]+)\}", value)
    assert match, f"{value!r} is not ${{{variable}:-default}}"
    return match.group(1)


@pytest.mark.parametrize("name", ["features", "train", "encoder", "predictor", "gateway"])
def test_python_images_take_their_base_as_a_build_argument(name):
    build = SERVICES[name]["build"]
    assert _default(build["args"]["PYTHON_IMAGE"], "PYTHON_IMAGE") == PYTHON_DEFAULT
    text = (ROOT / build["dockerfile"]).read_text()
    assert re.search(rf"^ARG PYTHON_IMAGE={re.escape(PYTHON_DEFAULT)}$", text, re.MULTILINE)
    # ARG before the first FROM: every stage (the predictor has two) starts from the argument.
    assert text.index("ARG PYTHON_IMAGE") < text.index("FROM")
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms and set(froms) == {"${PYTHON_IMAGE}"}
    # No `# syntax=` line: BuildKit would pull that frontend image from a registry.
    assert "syntax=" not in text


def test_redis_is_built_from_its_base_argument_and_persists():
    redis = SERVICES["redis"]
    build = redis["build"]
    default = _default(build["args"]["REDIS_IMAGE"], "REDIS_IMAGE")
    assert re.fullmatch(r"redis:7[\w.-]*", default), "the official redis 7 image by default"
    text = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert re.search(rf"^ARG REDIS_IMAGE={re.escape(default)}$", text, re.MULTILINE)
    assert re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE) == ["${REDIS_IMAGE}"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    # The append-only file on a named volume: a Redis restart keeps features and decisions.
    assert options["--appendonly"] == "yes"
    volume, _, target = redis["volumes"][0].partition(":")
    assert volume in COMPOSE["volumes"] and target == options["--dir"]
    # Debian's redis-server starts in protected mode (refusing other containers); the official
    # image has it off already.
    assert options["--protected-mode"] == "no"


def test_gateway_reads_the_samples_from_the_feature_data_volume():
    gateway = SERVICES["gateway"]
    samples = Path(gateway["environment"]["GATEWAY_SAMPLES_PATH"])
    assert f"feature-data:{samples.parent}:ro" in gateway["volumes"]
    tools = SERVICES["features"]
    assert "feature-data:/app/feature_repo/data" in tools["volumes"]


def test_docker_tests_run_only_on_request():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("docker:") for m in options["markers"])
    assert "-m 'not docker'" in options["addopts"]
    assert "pytest -m docker" in (ROOT / "scripts/docker-ci.sh").read_text()
    assert "scripts/docker-ci.sh" in (ROOT / ".ci/run").read_text()


def test_the_gateway_is_given_the_time_its_stop_takes():
    """A stop waits for the requests in flight (at most the runner's ``GRACEFUL_STOP_S``), then
    the gateway sends its spooled decision events (``events_drain_timeout_s``): compose must not
    kill it before (its default is 10 s)."""
    grace = SERVICES["gateway"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace), grace
    needed = GRACEFUL_STOP_S + GatewaySettings.model_fields["events_drain_timeout_s"].default
    assert int(grace[:-1]) > needed
