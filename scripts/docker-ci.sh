#!/usr/bin/env bash
# The compose stack for real (the tests marked `docker`; .ci/run calls this after the suite).
# As root on Debian: install the engine, compose 1.29 and debootstrap from Debian, start the
# engine unless one answers (stopped again at the end, by its PID), make the base images from
# Debian packages when PYTHON_IMAGE / REDIS_IMAGE are not given (no registry is reachable here),
# and build on the host network. Elsewhere the tests use whatever engine answers, or are skipped
# with the reason. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

dockerd_pid=
stop_engine() {
  if [ -n "$dockerd_pid" ]; then
    echo "[docker-ci] stopping the engine (pid $dockerd_pid)" >&2
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
}
trap stop_engine EXIT

if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # the test's throwaway certificate
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[docker-ci] apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    log=$(mktemp --suffix=.dockerd.log)
    echo "[docker-ci] starting dockerd (log $log)" >&2
    # Leave the machine's own network rules alone: compose's networks, their DNS and the
    # published port work without the default bridge and iptables.
    dockerd --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 30 "$log" >&2; echo "[docker-ci] dockerd did not answer" >&2; exit 1; }
  fi
  if [ -z "${PYTHON_IMAGE:-}" ] && [ -z "${REDIS_IMAGE:-}" ]; then
    eval "$(bash docker/local-base-images.sh)"   # exports PYTHON_IMAGE and REDIS_IMAGE
  fi
  # The legacy builder on the host network: package indexes are reachable, nothing is pulled.
  export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 VIGIL_DOCKER_BUILD_NETWORK=${VIGIL_DOCKER_BUILD_NETWORK:-host}
else
  echo "[docker-ci] not root on Debian: no engine is installed or started here" >&2
fi

bash scripts/setup.sh
.venv/bin/python -m pytest -m docker "$@"
