# syntax=docker/dockerfile:1.7
# The CPU scoring runtime: `scoring fetch` (init container; local or Azure ML registry) and `scoring serve` with scikit-learn.
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t scoring-runtime:dev .
# The base is a build argument: users keep python:3.11-slim; the real-node tests pass a Debian 12 base
# bootstrapped from Debian packages (python3 3.11 + venv; see hack/build-images.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages): this layer stays cached while only
# the sources change. --upgrade-deps: a current pip (Debian 12's 23.0 fails to resolve the azure extras).
COPY pyproject.toml ./
RUN mkdir -p scoring_runtime scoring_operator \
 && touch README.md scoring_runtime/__init__.py scoring_operator/__init__.py \
 && python -m venv --upgrade-deps /opt/venv && /opt/venv/bin/pip install ".[sklearn,azure]"
COPY README.md ./
COPY scoring_runtime ./scoring_runtime
COPY scoring_operator ./scoring_operator
# setuptools would reuse build/ from the dependency layer (its empty packages look up to date): drop it.
RUN rm -rf build ./*.egg-info && /opt/venv/bin/pip install --no-deps --force-reinstall .

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SCORING_HOST=0.0.0.0 SCORING_PORT=8080 HOME=/tmp
RUN groupadd --gid 10001 scoring && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin scoring
COPY --from=build /opt/venv /opt/venv
# The pod mounts an emptyDir at /model (filled by `scoring fetch`) and at /tmp; the root FS is read-only.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["scoring"]
CMD ["serve", "--model-dir", "/model", "--port", "8080"]
