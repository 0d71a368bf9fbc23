#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl), etcd, kwok and helm from their Go modules, through the Go module proxy.
#
# Binaries land in a cache outside the repository keyed by the version set, so a second run only
# checks that they exist:  ${XDG_CACHE_HOME:-~/.cache}/scoring-operator/bin/<versions>/
# Prints that directory on the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
source "$here/versions.env"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/scoring-operator"
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache_root/bin/$key"
work="$cache_root/work/$key"
mkdir -p "$bin" "$work"

log() { echo "[cluster-bin $(date +%H:%M:%S)] $*" >&2; }

have_all() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm; do
    [[ -x "$bin/$b" ]] || return 1
  done
}

if have_all; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

# Keep the builds alive in the log: the first, cold build takes a long while on 2 cores.
heartbeat() { while sleep 60; do log "still building... ($(ls "$bin" | tr '\n' ' '))"; done; }
heartbeat & hb=$!
trap 'kill $hb 2>/dev/null || true' EXIT

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
  if [[ ! -f "$d/go.mod" ]]; then
    log "resolving k8s.io/kubernetes ${K8S_VERSION} (wrapper module)"
    (cd "$d" && go mod init scoring-operator.local/k8s-bins >/dev/null 2>&1)
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to ./staging with
    # replace directives that do not apply to a dependency; map each to its published release.
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    local m
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod"); do
      (cd "$d" && go mod edit -replace "$m=$m@$staging_ver")
    done
    (cd "$d" && go mod edit -go=1.26.0 -require "k8s.io/kubernetes@${K8S_VERSION}")
  fi
  local t
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$bin/$t" ]] && continue
    log "building $t ${K8S_VERSION}"
    (cd "$d" && go get "k8s.io/kubernetes/cmd/$t@${K8S_VERSION}" >/dev/null 2>&1 || true)
    (cd "$d" && go build -trimpath -tags grpcnotrace,notest -ldflags "-s -w $(ldflags_version)" \
        -o "$bin/$t.tmp" "k8s.io/kubernetes/cmd/$t") && mv "$bin/$t.tmp" "$bin/$t"
  done
}

build_etcd() {
  [[ -x "$bin/etcd" ]] && return 0
  local d="$work/etcd"
  mkdir -p "$d"
  log "building etcd ${ETCD_VERSION}"
  if [[ ! -f "$d/go.mod" ]]; then
    (cd "$d" && go mod init scoring-operator.local/etcd-bin >/dev/null 2>&1 \
      && go mod edit -go=1.26.0 && go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null 2>&1)
  fi
  (cd "$d" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) \
    && mv "$bin/etcd.tmp" "$bin/etcd"
}

build_kwok() {
  [[ -x "$bin/kwok" ]] && return 0
  log "building kwok ${KWOK_VERSION}"
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  mv "$work/gobin/kwok" "$bin/kwok"
}

build_helm() {
  [[ -x "$bin/helm" ]] && return 0
  log "building helm ${HELM_VERSION}"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
  GOBIN="$work/gobin" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  mv "$work/gobin/helm" "$bin/helm"
}

build_etcd
build_kwok
build_helm
build_kubernetes

have_all || { log "some binaries are missing in $bin"; exit 1; }
log "done: $bin"
echo "$bin"
