# syntax=docker/dockerfile:1
# The gateway: the API, keys and balances, the relay to upstream providers and to the engine on
# Ray Serve. No torch and no diffusers: local models run on the engine image (engine.Dockerfile).
#
#   docker build -f deploy/gateway.Dockerfile -t imagegate-gateway:0.1.0 .    (from the repo root)
#
# Ray's version (and Python's) must be the engine image's: a gateway joins the Ray cluster as a
# driver and requests travel pickled.

FROM python:3.11.13-slim-bookworm AS build
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The server and the clients of PostgreSQL, S3, Redis and Ray: not the `local` extra.
RUN python -m venv /opt/imagegate \
 && /opt/imagegate/bin/pip install --no-cache-dir ".[postgres,s3,redis,ray]" "ray[serve]==${RAY_VERSION}" \
 && if /opt/imagegate/bin/python -c "import torch" 2>/dev/null; then echo "torch in the gateway image" >&2; exit 1; fi

FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 imagegate \
 && useradd --system --uid 10001 --gid imagegate --home-dir /var/lib/imagegate --create-home imagegate
COPY --from=build /opt/imagegate /opt/imagegate
ENV PATH=/opt/imagegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IMAGEGATE_HOST=0.0.0.0 \
    IMAGEGATE_PORT=8000 \
    IMAGEGATE_DATA_DIR=/var/lib/imagegate
USER 10001:10001
WORKDIR /var/lib/imagegate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('IMAGEGATE_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["imagegate"]
# One process; `serve --workers N` for N on the port (docs/deployment.md, "Gateway replicas").
CMD ["serve"]
