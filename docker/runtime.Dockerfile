# syntax=docker/dockerfile:1.7
# The CPU scoring runtime: `scoring fetch` (init container; local or Azure ML registry) and `scoring serve` with scikit-learn.
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t scoring-runtime:dev .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scoring_runtime ./scoring_runtime
COPY scoring_operator ./scoring_operator
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ".[sklearn,azure]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SCORING_HOST=0.0.0.0 SCORING_PORT=8080 HOME=/tmp
RUN groupadd --gid 10001 scoring && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin scoring
COPY --from=build /opt/venv /opt/venv
# The pod mounts an emptyDir at /model (filled by `scoring fetch`) and at /tmp; the root FS is read-only.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["scoring"]
CMD ["serve", "--model-dir", "/model", "--port", "8080"]
