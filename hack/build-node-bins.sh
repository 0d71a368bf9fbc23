#!/usr/bin/env bash
# Build what a REAL test node needs on top of the control plane: kubelet and kube-proxy (from the
# same k8s.io/kubernetes wrapper module and version as kube-apiserver), metrics-server (its Go
# module), and the sandbox "pause" binary (compiled statically from pause.c in the kubernetes module).
#
# Output: ${XDG_CACHE_HOME:-~/.cache}/scoring-operator/bin/node-<versions>/ (printed last on stdout).
# Usage: build-node-bins.sh            build what is missing (cold: 2.6 min after the control plane on a quiet 2-core box, which it shares a Go build cache with; 22 min with empty caches on a busy one)
#        build-node-bins.sh --check    only check: print the dir and exit 0, or exit 3
#        build-node-bins.sh --force    rebuild everything (same as SCORING_REBUILD=1)
# Needs Go 1.26 (GOTOOLCHAIN=local) and a C compiler with a static libc (gcc + libc6-dev) for pause.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
source "$here/versions.env"

mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --force) mode=force ;;
  -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac
[[ "${SCORING_REBUILD:-}" == 1 && $mode == build ]] && mode=force

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/scoring-operator"
key="node-k8s-${K8S_VERSION}_metrics-server-${METRICS_SERVER_VERSION}"
bin="$cache_root/bin/$key"
work="$cache_root/work/$key"
logs="$work/logs"
required=(kubelet kube-proxy metrics-server pause)

log() { echo "[node-bin $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have_all() { local b; for b in "${required[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
missing() { local b out=(); for b in "${required[@]}"; do [[ -x "$bin/$b" ]] || out+=("$b"); done; echo "${out[*]}"; }

if [[ $mode == check ]]; then
  if have_all; then echo "$bin"; exit 0; fi
  log "missing in $bin: $(missing); build them with: bash $here/build-node-bins.sh"
  exit 3
fi
if [[ $mode == build ]] && have_all; then log "cached: $bin"; echo "$bin"; exit 0; fi

command -v go >/dev/null || die "go is not installed (Kubernetes ${K8S_VERSION} needs Go 1.26; GOTOOLCHAIN=local)"
command -v gcc >/dev/null || die "gcc is not installed (apt-get install gcc libc6-dev): pause is compiled from C"
mkdir -p "$bin" "$work" "$logs"
exec 9>"$cache_root/bin/$key.lock"
if ! flock -n 9; then log "another build of $key is running; waiting for it"; flock 9; fi
if [[ $mode == force ]]; then rm -f "$bin"/*; elif have_all; then echo "$bin"; exit 0; fi

start_all=$SECONDS
run() {
  local step=$1; shift
  local t0=$SECONDS
  if ! "$@" >"$logs/$step.log" 2>&1; then
    log "FAILED: $* (in $PWD)"
    grep -v '^go: downloading ' "$logs/$step.log" | tail -n 40 >&2 || true
    die "step '$step' failed after $((SECONDS - t0))s; full log: $logs/$step.log"
  fi
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
staging_ver="v0.${K8S_VERSION#v1.}"
ldflags_version() {
  local pkg out=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${k8s_minor}"
    out+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$out"
}

k8s_dir=""
k8s_module() {
  # The same wrapper-module trick as build-cluster-bins.sh: k8s.io/kubernetes maps its staging
  # modules to ./staging, which does not apply to a dependency; replace each with its release.
  local d="$work/kubernetes" m gomod
  mkdir -p "$d"
  if [[ ! -f "$d/go.mod" ]] || ! grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "$d/go.mod"; then
    log "resolving k8s.io/kubernetes ${K8S_VERSION} (wrapper module in $d)"
    rm -f "$d/go.mod" "$d/go.sum"
    (cd "$d" && run k8s-mod-init go mod init scoring-operator.local/k8s-node-bins)
    (cd "$d" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" >"$logs/k8s-mod.json" 2>"$logs/k8s-mod.log") \
      || die "go mod download k8s.io/kubernetes@${K8S_VERSION} failed: $(tail -n 20 "$logs/k8s-mod.log")"
    gomod="$(json_field "$logs/k8s-mod.json" GoMod)"
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod"); do
      (cd "$d" && go mod edit -replace "$m=$m@$staging_ver")
    done
    (cd "$d" && go mod edit -go=1.26.0 -require "k8s.io/kubernetes@${K8S_VERSION}")
  fi
  k8s_dir="$d"
}

build_k8s() {
  local t t0
  for t in kubelet kube-proxy; do
    [[ -x "$bin/$t" ]] && continue
    [[ -n $k8s_dir ]] || k8s_module
    t0=$SECONDS
    log "building $t ${K8S_VERSION}"
    (cd "$k8s_dir" && run "$t-get" go get "k8s.io/kubernetes/cmd/$t@${K8S_VERSION}")
    (cd "$k8s_dir" && run "$t-build" go build -trimpath -tags grpcnotrace,notest -ldflags "-s -w $(ldflags_version)" \
        -o "$bin/$t.tmp" "k8s.io/kubernetes/cmd/$t")
    mv "$bin/$t.tmp" "$bin/$t"
    log "built $t in $((SECONDS - t0))s"
  done
}

build_pause() {
  [[ -x "$bin/pause" ]] && return 0
  local dir
  (cd "$work" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" >"$logs/pause-src.json" 2>"$logs/pause-src.log") \
    || die "go mod download k8s.io/kubernetes@${K8S_VERSION} failed: $(tail -n 20 "$logs/pause-src.log")"
  dir="$(json_field "$logs/pause-src.json" Dir)"
  [[ -f "$dir/build/pause/linux/pause.c" ]] || die "no build/pause/linux/pause.c in $dir"
  log "compiling pause from $dir/build/pause/linux/pause.c"
  run pause-cc gcc -Os -Wall -Werror -static -DVERSION="${K8S_VERSION}-scoring" \
    -o "$bin/pause.tmp" "$dir/build/pause/linux/pause.c"
  strip "$bin/pause.tmp" 2>/dev/null || true
  mv "$bin/pause.tmp" "$bin/pause"
}

build_metrics_server() {
  [[ -x "$bin/metrics-server" ]] && return 0
  local t0=$SECONDS ld="-s -w"
  ld+=" -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=${METRICS_SERVER_VERSION}"
  log "building metrics-server ${METRICS_SERVER_VERSION}"
  GOBIN="$work/gobin" run metrics-server-install go install -trimpath -ldflags "$ld" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@${METRICS_SERVER_VERSION}"
  mv "$work/gobin/metrics-server" "$bin/metrics-server"
  log "built metrics-server in $((SECONDS - t0))s"
}

log "building into $bin (missing: $(missing)); go: $(go version | cut -d' ' -f3), logs: $logs"
build_pause
build_metrics_server
build_k8s
have_all || die "some binaries are still missing in $bin: $(missing)"
"$bin/kubelet" --version >&2 || die "kubelet does not run"
log "done in $((SECONDS - start_all))s: $bin"
echo "$bin"
