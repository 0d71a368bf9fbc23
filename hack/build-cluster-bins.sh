#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl), etcd, kwok and helm from their Go modules, through the Go module proxy.
#
# Binaries land in a cache outside the repository keyed by the version set, so a second run only
# checks that they exist:  ${XDG_CACHE_HOME:-~/.cache}/scoring-operator/bin/<versions>/
# Prints that directory on the last line of stdout; progress and errors go to stderr.
#
# Usage: build-cluster-bins.sh            build what is missing (cold: ~10 min on 2 cores)
#        build-cluster-bins.sh --check    only check: print the dir and exit 0, or exit 3
#        build-cluster-bins.sh --force    rebuild everything (same as SCORING_REBUILD=1)
# Go build logs: <cache>/work/<versions>/logs/<step>.log (the tail is printed on failure).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
source "$here/versions.env"

mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --force) mode=force ;;
  -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac
[[ "${SCORING_REBUILD:-}" == 1 && $mode == build ]] && mode=force

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/scoring-operator"
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache_root/bin/$key"
work="$cache_root/work/$key"
logs="$work/logs"
required=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

log() { echo "[cluster-bin $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_all() {
  local b
  for b in "${required[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
  [[ -s "$bin/kwok-stages.yaml" ]]
}
missing() {
  local b out=()
  for b in "${required[@]}"; do [[ -x "$bin/$b" ]] || out+=("$b"); done
  [[ -s "$bin/kwok-stages.yaml" ]] || out+=(kwok-stages.yaml)
  echo "${out[*]}"
}

if [[ $mode == check ]]; then
  if have_all; then echo "$bin"; exit 0; fi
  log "missing in $bin: $(missing); build them with: bash $here/build-cluster-bins.sh"
  exit 3
fi
if [[ $mode == build ]] && have_all; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || die "go is not installed (Kubernetes ${K8S_VERSION} needs Go 1.26; GOTOOLCHAIN=local)"
mkdir -p "$bin" "$work" "$logs"

# One build at a time per version set: a second caller waits, then finds everything cached.
exec 9>"$cache_root/bin/$key.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
fi
if [[ $mode == force ]]; then
  log "--force: removing $bin/*"
  rm -f "$bin"/*
elif have_all; then
  log "cached (built by the other run): $bin"
  echo "$bin"
  exit 0
fi

start_all=$SECONDS
# Keep the builds alive in the log: the first, cold build takes a long while on 2 cores.
heartbeat() { while sleep 60; do log "still building... (done: $(ls "$bin" | grep -v '\.tmp$' | tr '\n' ' '))"; done; }
heartbeat & hb=$!
trap 'kill $hb 2>/dev/null || true' EXIT

# run STEP CMD...: run a go command with its output in $logs/STEP.log; on failure show the tail.
run() {
  local step=$1; shift
  local t0=$SECONDS
  if ! "$@" >"$logs/$step.log" 2>&1; then
    log "FAILED: $* (in $PWD)"
    grep -v '^go: downloading ' "$logs/$step.log" | tail -n 40 >&2 || true
    die "step '$step' failed after $((SECONDS - t0))s; full log: $logs/$step.log"
  fi
}

# run_json STEP CMD...: like run, but stdout (JSON) goes to $logs/STEP.json.
run_json() {
  local step=$1; shift
  if ! "$@" >"$logs/$step.json" 2>"$logs/$step.log"; then
    log "FAILED: $* (in $PWD)"
    tail -n 40 "$logs/$step.log" "$logs/$step.json" >&2 || true
    die "step '$step' failed; full log: $logs/$step.log"
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

build_kubernetes() {
  local d="$work/kubernetes"
  mkdir -p "$d"
  if [[ ! -f "$d/go.mod" ]] || ! grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "$d/go.mod"; then
    log "resolving k8s.io/kubernetes ${K8S_VERSION} (wrapper module in $d)"
    rm -f "$d/go.mod" "$d/go.sum"
    (cd "$d" && run k8s-mod-init go mod init scoring-operator.local/k8s-bins)
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to ./staging with
    # replace directives that do not apply to a dependency; map each to its published release.
    local gomod m
    (cd "$d" && run_json k8s-mod-download go mod download -json "k8s.io/kubernetes@${K8S_VERSION}")
    gomod="$(json_field "$logs/k8s-mod-download.json" GoMod)"
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod"); do
      (cd "$d" && go mod edit -replace "$m=$m@$staging_ver")
    done
    (cd "$d" && go mod edit -go=1.26.0 -require "k8s.io/kubernetes@${K8S_VERSION}")
  fi
  local t t0
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$bin/$t" ]] && continue
    t0=$SECONDS
    log "building $t ${K8S_VERSION}"
    (cd "$d" && run "$t-get" go get "k8s.io/kubernetes/cmd/$t@${K8S_VERSION}")
    (cd "$d" && run "$t-build" go build -trimpath -tags grpcnotrace,notest -ldflags "-s -w $(ldflags_version)" \
        -o "$bin/$t.tmp" "k8s.io/kubernetes/cmd/$t")
    mv "$bin/$t.tmp" "$bin/$t"
    log "built $t in $((SECONDS - t0))s"
  done
}

build_etcd() {
  [[ -x "$bin/etcd" ]] && return 0
  local d="$work/etcd" t0=$SECONDS
  mkdir -p "$d"
  log "building etcd ${ETCD_VERSION}"
  if [[ ! -f "$d/go.mod" ]] || ! grep -q "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}" "$d/go.mod"; then
    rm -f "$d/go.mod" "$d/go.sum"
    (cd "$d" && run etcd-mod-init go mod init scoring-operator.local/etcd-bin && go mod edit -go=1.26.0 \
      && run etcd-get go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
  fi
  (cd "$d" && run etcd-build go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
  log "built etcd in $((SECONDS - t0))s"
}

build_kwok() {
  if [[ ! -x "$bin/kwok" ]]; then
    local t0=$SECONDS
    log "building kwok ${KWOK_VERSION}"
    GOBIN="$work/gobin" run kwok-install go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
    mv "$work/gobin/kwok" "$bin/kwok"
    log "built kwok in $((SECONDS - t0))s"
  fi
  # The kwok binary has no built-in stages (kwokctl injects them): ship the upstream "fast" node
  # and pod stages of the same release, with lease heartbeats, as one config file.
  if [[ ! -s "$bin/kwok-stages.yaml" ]]; then
    local dir f
    run_json kwok-mod-download go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}"
    dir="$(json_field "$logs/kwok-mod-download.json" Dir)"
    {
      echo "# kwok ${KWOK_VERSION} stages: node fast + heartbeat-with-lease, pod fast (generated by $(basename "$0"))"
      for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
               pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        [[ -f "$dir/kustomize/stage/$f" ]] || die "kwok ${KWOK_VERSION} has no kustomize/stage/$f"
        echo "---"
        cat "$dir/kustomize/stage/$f"
      done
    } >"$bin/kwok-stages.yaml.tmp"
    mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
  fi
}

build_helm() {
  [[ -x "$bin/helm" ]] && return 0
  local t0=$SECONDS
  log "building helm ${HELM_VERSION}"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
  GOBIN="$work/gobin" run helm-install go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  mv "$work/gobin/helm" "$bin/helm"
  log "built helm in $((SECONDS - t0))s"
}

log "building into $bin (missing: $(missing)); go: $(go version | cut -d' ' -f3), logs: $logs"
build_etcd
build_kwok
build_helm
build_kubernetes

have_all || die "some binaries are still missing in $bin: $(missing)"
"$bin/kube-apiserver" --version >&2 || die "kube-apiserver does not run"
log "done in $((SECONDS - start_all))s: $bin"
echo "$bin"
