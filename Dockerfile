# syntax=docker/dockerfile:1
#
# Depot's production image: `docker build -t depot .`, or `docker compose up`
# (see compose.yaml). The same image runs `depot serve`, `depot worker`,
# `depot scheduler` and `depot migrate`, as uid 10001 and on a read-only
# root filesystem (deploy/k8s mounts an emptyDir at /tmp, the one directory
# Depot writes to in production).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: install Depot and its runtime dependencies into a venv --------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The lock first, in a layer of its own: a code change reuses it. Every
# package (and the setuptools that builds Depot) at its locked version,
# checked against its locked hashes; `make lock` refreshes the file.
COPY requirements/runtime.txt ./requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes -r requirements/runtime.txt
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY migrations ./migrations
COPY schema ./schema
COPY storage ./storage
COPY workers ./workers
# A regular (not editable) install of Depot alone: its dependencies are all
# in the venv already, and nothing points back at /src.
RUN pip install --no-deps --no-build-isolation . && pip check

# --- runtime: the venv, a non-root user, nothing else -----------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DEPOT_VAR_DIR=/app/var

# A fixed uid/gid, so volumes and Kubernetes' runAsNonRoot can rely on it.
RUN groupadd --system --gid 10001 depot \
    && useradd --system --uid 10001 --gid depot --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin depot

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
RUN mkdir -p /app/var && chown depot:depot /app/var
USER 10001:10001

EXPOSE 8000
# /healthz only says the process answers; slim images have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["depot", "serve", "--host", "0.0.0.0", "--port", "8000"]
