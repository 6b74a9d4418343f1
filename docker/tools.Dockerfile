# Vigil's offline tools (generate, features, feast apply/materialize, train, batch-score):
# the only image with feast and xgboost together. Build context: the repo root.
# The base image is a build argument: a machine without a registry builds on its own Python 3.11
# image (see docker/local-base-images.sh and the README's Docker section).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements/constraints.txt requirements/constraints.txt
COPY libs/contracts libs/contracts
# The gateway's key store, for `vigil keys` (an operator's command run in this image).
COPY libs/servicekit libs/servicekit
COPY services/gateway services/gateway
COPY pyproject.toml README.md ./
COPY vigil vigil
RUN pip install -c requirements/constraints.txt ./libs/contracts ./libs/servicekit ./services/gateway . \
 && useradd --create-home --uid 10001 vigil \
 && mkdir -p /app/data /app/feature_repo/data /models \
 && chown -R vigil /app /models
COPY --chown=vigil feature_repo/feature_store.yaml feature_repo/features.py feature_repo/
USER vigil
ENV VIGIL_FEATURE_REPO=/app/feature_repo
ENTRYPOINT []
CMD ["vigil", "--help"]
