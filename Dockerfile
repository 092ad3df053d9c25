# syntax=docker/dockerfile:1
# The slotune operator image:  docker build -t slotune/slotune:0.1.0 .
# The Helm chart runs it with flags only (ENTRYPOINT is `slotune run`) and configures it
# through SLOTUNE_* environment variables. tests/image reproduces the build stage's install
# steps in a clean virtual environment; `make lock` regenerates requirements.lock.

# Pin by digest (python:3.11-slim-trixie@sha256:...) when publishing, for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/slotune
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /opt/slotune/bin/pip install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
# No build isolation: build with the setuptools pinned in the lock, not whatever is newest.
RUN /opt/slotune/bin/pip install --no-deps --no-build-isolation . \
    && /opt/slotune/bin/pip check

FROM ${PYTHON_IMAGE}
# A fixed numeric UID, so Kubernetes can verify runAsNonRoot (the chart runs it as 10001).
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin slotune
COPY --from=build /opt/slotune /opt/slotune
ENV PATH=/opt/slotune/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["slotune", "run"]
