# syntax=docker/dockerfile:1.7
# The operator image: `scoring-operator` (kopf + the official kubernetes client), no ML frameworks.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t scoring-operator:dev .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scoring_runtime ./scoring_runtime
COPY scoring_operator ./scoring_operator
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ".[operator,azure]"

FROM python:3.11-slim
# HOME: the user has no home directory and the root FS is read-only; /tmp is a writable emptyDir.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
RUN groupadd --gid 10001 scoring && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin scoring
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["scoring-operator"]
CMD ["--all-namespaces"]
