#!/usr/bin/env bash
# Build the container images the real test node runs, without a Docker daemon (buildah), and cache
# them as OCI archives keyed by a hash of their inputs, so a second run rebuilds nothing:
#   base      Debian 12 rootfs from Debian packages (mmdebstrap): python3 3.11 + venv. No image
#             registry is reachable here, so it stands in for python:3.11-slim (BASE_IMAGE build arg).
#   runtime   docker/runtime.Dockerfile  (scoring fetch / scoring serve, scikit-learn)
#   operator  docker/operator.Dockerfile (scoring-operator)
#   pause     the sandbox image: the static pause binary from hack/build-node-bins.sh
# Output: ${XDG_CACHE_HOME:-~/.cache}/scoring-operator/images/<name>-<hash>.oci.tar; the last stdout
# line is a JSON object {name: {"ref": image reference, "archive": path}} for the node harness.
# Usage: build-images.sh [--check]   (--check: no build, exit 3 when an image is missing)
#        build-images.sh --base-only  (only the Debian base: needs no Go build, so CI runs it alongside them)
# Needs (apt): buildah mmdebstrap; as root. pip in the build reaches PyPI (host network, host CA).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck disable=SC1091
source "$here/versions.env"
mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --base-only) mode=base ;;
  -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/scoring-operator"
out="$cache_root/images"
store="$cache_root/containers"
logs="$out/logs"
mkdir -p "$out" "$logs"
log() { echo "[images $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
bh() { buildah --root "$store/storage" --runroot "$store/run" --storage-driver overlay "$@"; }
sha() { sha256sum | cut -c1-16; }

# Inputs of each image. The base: the package set and suite (Debian's archive is the source).
debian_suite=bookworm
base_pkgs="python3,python3-venv,python-is-python3,ca-certificates,passwd"
base_hash=$(printf '%s\n' "v1" "$debian_suite" "$base_pkgs" | sha)
# The repo images: their Dockerfile, ignore file, and every file the build context lets through.
context_hash() {
  local dockerfile=$1
  {
    echo "v1 base=$base_hash"
    sha256sum "$repo/$dockerfile" "$repo/$dockerfile.dockerignore" | cut -d' ' -f1
    (cd "$repo" && find pyproject.toml README.md scoring_runtime scoring_operator -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha
}
node_bin="$cache_root/bin/node-k8s-${K8S_VERSION}_metrics-server-${METRICS_SERVER_VERSION}"
pause_hash() {
  [[ -x $node_bin/pause ]] || die "$node_bin/pause is not built: run bash hack/build-node-bins.sh first"
  sha256sum "$node_bin/pause" | sha
}
have_image() { bh images --quiet "$1" >/dev/null 2>&1; }
if [[ $mode == base ]]; then
  exec 9>"$out/.lock"
  flock 9
  base_ref="localhost/scoring-test-base:$base_hash"
  have_image "$base_ref" && { log "cached: $base_ref"; exit 0; }
fi
runtime_hash=$(context_hash docker/runtime.Dockerfile)
operator_hash=$(context_hash docker/operator.Dockerfile)
if [[ $mode == base ]]; then p_hash=none; else p_hash=$(pause_hash); fi

declare -A ref archive
ref[base]="localhost/scoring-test-base:$base_hash"
ref[runtime]="localhost/scoring-runtime:$runtime_hash"
ref[operator]="localhost/scoring-operator:$operator_hash"
ref[pause]="localhost/scoring-pause:$p_hash"
for n in base runtime operator pause; do archive[$n]="$out/$n-${ref[$n]##*:}.oci.tar"; done

manifest() {
  python3 - "${ref[runtime]}" "${archive[runtime]}" "${ref[operator]}" "${archive[operator]}" \
    "${ref[pause]}" "${archive[pause]}" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({n: {"ref": a[2 * i], "archive": a[2 * i + 1]} for i, n in enumerate(("runtime", "operator", "pause"))}))
EOF
}
all_cached() { [[ -s ${archive[runtime]} && -s ${archive[operator]} && -s ${archive[pause]} ]]; }

if [[ $mode == base ]]; then
  for t in buildah mmdebstrap; do command -v $t >/dev/null || die "$t is not installed (apt-get install buildah mmdebstrap)"; done
fi
if [[ $mode != base ]] && all_cached; then log "cached: ${ref[runtime]} ${ref[operator]} ${ref[pause]}"; manifest; exit 0; fi
if [[ $mode == check ]]; then log "missing images; build them with: bash $here/build-images.sh"; exit 3; fi
for t in buildah mmdebstrap; do command -v $t >/dev/null || die "$t is not installed (apt-get install buildah mmdebstrap)"; done
if [[ $mode != base ]]; then
  exec 9>"$out/.lock"
  if ! flock -n 9; then log "another image build is running; waiting for it"; flock 9; fi
  all_cached && { manifest; exit 0; }
fi
t_all=$SECONDS

# save NAME: export the built image as an OCI archive that containerd imports.
save() {
  local n=$1
  rm -f "${archive[$n]}.tmp"
  bh push --quiet "${ref[$n]}" "oci-archive:${archive[$n]}.tmp:${ref[$n]}" >"$logs/$n-push.log" 2>&1 \
    || die "exporting ${ref[$n]} failed: $(tail -n 20 "$logs/$n-push.log")"
  mv "${archive[$n]}.tmp" "${archive[$n]}"
}

build_base() {
  have_image "${ref[base]}" && return 0
  local rootfs="$out/base-rootfs-$base_hash" t0=$SECONDS c
  if [[ ! -d $rootfs ]]; then
    rm -rf "$rootfs.tmp"
    log "bootstrapping Debian $debian_suite ($base_pkgs) with mmdebstrap"
    mmdebstrap --variant=minbase --include="$base_pkgs" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Retries "3"' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$debian_suite" "$rootfs.tmp" >"$logs/base-mmdebstrap.log" 2>&1 \
      || die "mmdebstrap failed: $(tail -n 20 "$logs/base-mmdebstrap.log")"
    mv "$rootfs.tmp" "$rootfs"
  fi
  c=$(bh from --quiet scratch)
  bh add --quiet "$c" "$rootfs" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' "$c"
  bh commit --quiet --rm "$c" "${ref[base]}" >/dev/null
  log "base ${ref[base]} in $((SECONDS - t0))s"
}

build_repo_image() {
  local n=$1 dockerfile=$2 t0=$SECONDS
  [[ -s ${archive[$n]} ]] && return 0
  if ! have_image "${ref[$n]}"; then
    log "building ${ref[$n]} from $dockerfile (BASE_IMAGE=${ref[base]}); log: $logs/$n-build.log"
    # pip inside the build needs PyPI: host network, and the host's CA bundle and pip config
    # (a TLS-inspecting proxy's CA is in the host bundle only).
    local vols=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    [[ -f /etc/pip.conf ]] && vols+=(-v /etc/pip.conf:/etc/pip.conf:ro)
    # --layers: the dependency layer is reused while pyproject.toml is unchanged (a code change
    # rebuilds in seconds).
    bh build --quiet --layers --pull=never --network host --isolation chroot "${vols[@]}" \
      --build-arg "BASE_IMAGE=${ref[base]}" --ignorefile "$repo/$dockerfile.dockerignore" \
      -f "$repo/$dockerfile" -t "${ref[$n]}" "$repo" >"$logs/$n-build.log" 2>&1 \
      || die "building $n failed: $(tail -n 30 "$logs/$n-build.log")"
  fi
  save "$n"
  log "$n ${ref[$n]} in $((SECONDS - t0))s ($(du -h "${archive[$n]}" | cut -f1))"
}

build_pause_image() {
  [[ -s ${archive[pause]} ]] && return 0
  local c
  if ! have_image "${ref[pause]}"; then
    c=$(bh from --quiet scratch)
    bh copy --quiet "$c" "$node_bin/pause" /pause >/dev/null
    bh config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    bh commit --quiet --rm "$c" "${ref[pause]}" >/dev/null
  fi
  save pause
}

if [[ $mode == base ]]; then build_base; exit 0; fi
build_pause_image
build_base
build_repo_image runtime docker/runtime.Dockerfile
build_repo_image operator docker/operator.Dockerfile
# Old archives of other hashes are stale: keep only the current ones (and the base rootfs dir).
for f in "$out"/*.oci.tar; do
  case " ${archive[*]} " in *" $f "*) ;; *) rm -f "$f" ;; esac
done
log "done in $((SECONDS - t_all))s"
manifest
