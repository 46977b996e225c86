# syntax=docker/dockerfile:1
# A CUDA engine node of the Ray cluster: Ray, torch with CUDA, imagegate[local,ray]. The same
# image runs the Ray head (no GPU needed), the GPU workers, and `imagegate engine deploy`.
#
#   docker build -f deploy/engine.Dockerfile -t imagegate-engine:0.1.0 .     (from the repo root)
#
# PyPI's torch wheels for Linux x86-64 are CUDA builds (the CUDA libraries come as nvidia-*
# wheels), so the host needs only the NVIDIA driver and the NVIDIA container toolkit. Ray's and
# Python's versions must be the gateway image's.

FROM python:3.11.13-slim-bookworm AS build
ARG TORCH_VERSION=2.13.0
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/imagegate \
 && /opt/imagegate/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/imagegate/bin/pip install --no-cache-dir ".[local,ray]" "torch==${TORCH_VERSION}" "ray[serve]==${RAY_VERSION}"

FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 imagegate \
 && useradd --system --uid 10001 --gid imagegate --home-dir /var/lib/imagegate --create-home imagegate \
 && mkdir -p /models \
 && chown imagegate:imagegate /models
COPY --from=build /opt/imagegate /opt/imagegate
ENV PATH=/opt/imagegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    IMAGEGATE_DATA_DIR=/var/lib/imagegate \
    IMAGEGATE_MODELS_DIR=/models \
    HF_HOME=/models/.huggingface \
    RAY_ADDRESS=ray-head:6379
USER 10001:10001
WORKDIR /var/lib/imagegate
VOLUME ["/models"]
# The node's Ray cluster answers (its GCS, at RAY_ADDRESS).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "ray health-check --address \"$RAY_ADDRESS\""]
# A GPU worker; the head: ray start --head --port=6379 --num-gpus=0 --block
CMD ["sh", "-c", "exec ray start --address=\"$RAY_ADDRESS\" --block"]
