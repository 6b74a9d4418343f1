#!/usr/bin/env bash
# Base images for a machine that cannot pull from a registry, made from Debian packages:
#   vigil-local/python:3.11  stands in for python:3.11-slim (Debian bookworm's Python 3.11)
#   vigil-local/redis:7      stands in for the official redis 7 image (bookworm's redis-server 7.0)
# Build the stack on them with PYTHON_IMAGE / REDIS_IMAGE (printed at the end, as shell exports).
# Needs root, debootstrap and a running engine; an image that already exists is kept.
set -euo pipefail

PYTHON_TAG=${PYTHON_TAG:-vigil-local/python:3.11}
REDIS_TAG=${REDIS_TAG:-vigil-local/redis:7}
SUITE=${SUITE:-bookworm}
# The mirror apt already uses here (a CI machine may have its own).
MIRROR=${MIRROR:-$( (grep -rshoE '(URIs:|^deb)[[:space:]]+https?://[^[:space:]]+/debian/?' \
  /etc/apt/sources.list /etc/apt/sources.list.d/ || true) | awk '{print $2}' | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap a minimal root file system with PACKAGES and import it as TAG; extra args are
# `docker import --change` instructions.
make_image() {
  local tag=$1 packages=$2; shift 2
  local rootfs="$work/${tag//[\/:]/_}"
  echo "[base-images] debootstrap $SUITE ($packages) from $MIRROR -> $tag" >&2
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # The machine's CA bundle: pip and apt inside a build then trust whatever this machine trusts
  # (e.g. a TLS-inspecting proxy's CA).
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  [ -n "${prepare:-}" ] && "$prepare" "$rootfs"
  tar -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null
}

prepare_python() {
  # Where python:3.11-slim has them, so `python` and `pip` in Dockerfiles mean the same.
  ln -sf /usr/bin/python3 "$1/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"
}

prepare_redis() {
  # As the official image: /data (owned by redis) is the working directory, redis-server runs as
  # `redis`. A fresh named volume mounted on /data takes this ownership.
  mkdir -p "$1/data"
  chroot "$1" chown redis:redis /data
}

if ! have "$PYTHON_TAG"; then
  prepare=prepare_python make_image "$PYTHON_TAG" python3,python3-venv,python3-pip,ca-certificates \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'CMD ["python3"]'
fi
if ! have "$REDIS_TAG"; then
  prepare=prepare_redis make_image "$REDIS_TAG" redis-server,ca-certificates \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /data' \
    --change 'USER redis' \
    --change 'EXPOSE 6379' \
    --change 'CMD ["redis-server", "--protected-mode", "no"]'
fi
echo "export PYTHON_IMAGE=$PYTHON_TAG REDIS_IMAGE=$REDIS_TAG"
