#!/usr/bin/env bash
# The benchmark's compiled load generators (bench/loadgen.py):
# - wrk (closed loop): the Debian package; installed with apt-get when missing and we are root,
#   otherwise a clear message says how to install it;
# - vegeta (open loop, fixed arrival rate): built from its Go module with the Go module proxy, cached in
#   ~/.cache/scoring-operator/bench-bin (SCORING_BENCH_TOOLS) so a second run costs nothing.
# wrk2 (wrk with a fixed rate) is not packaged in Debian, hence vegeta for the open-loop points.
set -euo pipefail
VEGETA_VERSION="${VEGETA_VERSION:-v12.13.0}"
TOOLS="${SCORING_BENCH_TOOLS:-$HOME/.cache/scoring-operator/bench-bin}"
mkdir -p "$TOOLS"

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench-tools: installing wrk (apt-get install wrk)"
    apt-get install -y -q wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
  else
    echo "bench-tools: wrk is missing: install it (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk)" >&2
    exit 1
  fi
fi
echo "bench-tools: wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')"

if [ ! -x "$TOOLS/vegeta" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "bench-tools: vegeta is missing and Go is not installed: the open-loop points will be skipped" >&2
  else
    echo "bench-tools: building vegeta $VEGETA_VERSION from its Go module into $TOOLS (once)"
    (cd "$(mktemp -d)" && GOBIN="$TOOLS" GOFLAGS=-mod=mod go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION")
  fi
fi
[ -x "$TOOLS/vegeta" ] && echo "bench-tools: vegeta in $TOOLS"
exit 0
