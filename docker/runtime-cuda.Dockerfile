# syntax=docker/dockerfile:1.7
# The GPU scoring runtime: CUDA runtime + PyTorch (the Linux wheels on PyPI bundle CUDA) + scikit-learn.
# Build from the repository root:  docker build -f docker/runtime-cuda.Dockerfile -t scoring-runtime-cuda:dev .
# Runs on CPU as well (device auto); the node needs only the NVIDIA driver and device plugin.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scoring_runtime ./scoring_runtime
COPY scoring_operator ./scoring_operator
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[torch,sklearn,azure]"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SCORING_HOST=0.0.0.0 SCORING_PORT=8080 NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 scoring && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin scoring
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["scoring"]
CMD ["serve", "--model-dir", "/model", "--port", "8080"]
