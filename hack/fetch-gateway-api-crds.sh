#!/usr/bin/env bash
# Fetch the Gateway API CRDs (standard channel) of GATEWAY_API_VERSION (hack/versions.env) from the
# `sigs.k8s.io/gateway-api` Go module, through the Go module proxy (the project publishes them in its
# module, under config/crd/standard/), and cache them as one multi-document file outside the repo:
#   ${XDG_CACHE_HOME:-~/.cache}/scoring-operator/gateway-api/<version>/standard-install.yaml
# The exposure tests install it in the test control plane. Prints the file on the last stdout line.
#
# Usage: fetch-gateway-api-crds.sh           fetch when missing (seconds)
#        fetch-gateway-api-crds.sh --check   only check: print the file and exit 0, or exit 3
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
source "$here/versions.env"
: "${GATEWAY_API_VERSION:?hack/versions.env must pin GATEWAY_API_VERSION}"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/scoring-operator"
dir="$cache_root/gateway-api/$GATEWAY_API_VERSION"
out="$dir/standard-install.yaml"
log() { echo "[gateway-api $(date +%H:%M:%S)] $*" >&2; }

if [[ -s $out ]]; then echo "$out"; exit 0; fi
if [[ "${1:-}" == --check ]]; then
  log "missing: $out; fetch it with: bash $here/fetch-gateway-api-crds.sh"
  exit 3
fi
command -v go >/dev/null || { log "ERROR: go is not installed"; exit 1; }
mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `go mod download` needs no module of its own; GOFLAGS=-mod=mod keeps a caller's vendor mode out.
if ! (cd "$work" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
      >"$work/download.json" 2>"$work/download.log"); then
  cat "$work/download.log" "$work/download.json" >&2 || true
  log "ERROR: go mod download sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION failed"
  exit 1
fi
mod="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$work/download.json")"
# The CRDs only: the standard install's ValidatingAdmissionPolicy (refusing experimental or older
# CRDs over these) would guard every CRD write of the shared test cluster, for nothing tests need.
crds=()
for f in "$mod"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
  grep -q '^kind: CustomResourceDefinition' "$f" && crds+=("$f")
done
((${#crds[@]})) || { log "ERROR: no CRDs under $mod/config/crd/standard"; exit 1; }
{
  echo "# Gateway API $GATEWAY_API_VERSION, standard channel (sigs.k8s.io/gateway-api config/crd/standard;"
  echo "# fetched by hack/$(basename "$0"))"
  for f in "${crds[@]}"; do
    echo "---"
    cat "$f"
  done
} >"$out.tmp"
mv "$out.tmp" "$out"
log "cached ${#crds[@]} CRDs of Gateway API $GATEWAY_API_VERSION in $out"
echo "$out"
