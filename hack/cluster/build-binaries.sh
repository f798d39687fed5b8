#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from the Go module proxy into a cache outside the
# repository, once. Prints the folder holding the binaries on its last line.
#
# Honours KUBEBUILDER_ASSETS: when it names a folder that already holds etcd,
# kube-apiserver and kubectl (the envtest layout), nothing is built for those.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache_root="${PHASEGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phasegate}"
bin_dir="$cache_root/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
work="$cache_root/build"
mkdir -p "$bin_dir" "$work"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH. Install Go >= 1.25 (https://go.dev/doc/install, or 'apt-get install golang-go' where it is recent enough) and run again."

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[ "$go_minor" -ge 25 ] || die "Go $(go env GOVERSION) is too old: Kubernetes $K8S_VERSION needs Go >= 1.25. Install a newer Go and run again."

# Builds one or more main packages in a wrapper module that pins MODULE@VERSION and
# replaces the module's local (staging) replace targets with published versions.
# args: name module version replace_prefix replace_version ldflags pkg...
build_in_wrapper() {
  local name="$1" module="$2" version="$3" rprefix="$4" rversion="$5" ldflags="$6"; shift 6
  local dir="$work/$name-$version"
  mkdir -p "$dir"
  if [ ! -f "$dir/.ready" ]; then
    log "$name: resolving $module@$version from the module proxy"
    local modfile
    modfile="$(cd "$dir" && go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [ -f "$modfile" ] || die "$name: could not download $module@$version from the Go module proxy (GOPROXY=$(go env GOPROXY))."
    local gover
    gover="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$modfile" | head -1)"
    {
      echo "module phasegate.local/build/$name"
      echo "go $gover"
      echo "require $module $version"
      # every 'X => ./local/path' in the upstream go.mod becomes 'X => X rversion'
      grep -E "^\s*${rprefix}[^ ]* => \.\.?/" "$modfile" | awk -v v="$rversion" '{print "replace " $1 " => " $1 " " v}'
    } > "$dir/go.mod"
    (cd "$dir" && for p in "$@"; do go get "$p@$version" >/dev/null 2>&1 || go get "$p" ; done)
    touch "$dir/.ready"
  fi
  for p in "$@"; do
    local out="$bin_dir/$(basename "$p")"
    [ "$(basename "$p")" = "v3" ] && out="$bin_dir/etcd"
    if [ -x "$out" ]; then log "$name: $(basename "$out") already built"; continue; fi
    log "$name: compiling $(basename "$out") (first time only; a few minutes on 2 cores)"
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$p") && mv "$out.tmp" "$out"
  done
}

have_assets() {
  [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]
}

start=$(date +%s)
if have_assets; then
  log "using etcd and kube-apiserver from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    if [ -x "$KUBEBUILDER_ASSETS/$b" ] && ! [ "$KUBEBUILDER_ASSETS/$b" -ef "$bin_dir/$b" ]; then
      ln -sf "$KUBEBUILDER_ASSETS/$b" "$bin_dir/$b"
    fi
  done
fi

k8s_minor="${K8S_VERSION#v1.}"
ver_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor%%.*} -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
k8s_pkgs=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin_dir/$b" ] || k8s_pkgs+=("k8s.io/kubernetes/cmd/$b")
done
if [ ${#k8s_pkgs[@]} -gt 0 ]; then
  build_in_wrapper kubernetes k8s.io/kubernetes "$K8S_VERSION" "k8s.io/" "v0.${K8S_VERSION#v1.}" "$ver_ldflags" "${k8s_pkgs[@]}"
fi

if [ ! -x "$bin_dir/etcd" ]; then
  build_in_wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "go.etcd.io/etcd/" "$ETCD_VERSION" "-s -w" go.etcd.io/etcd/server/v3
fi

if [ ! -x "$bin_dir/kwok" ]; then
  log "kwok: go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
if [ ! -d "$bin_dir/kwok-stages" ]; then
  moddir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  mkdir -p "$bin_dir/kwok-stages.tmp"
  cp "$moddir"/kustomize/stage/node/fast/*.yaml "$moddir"/kustomize/stage/pod/fast/*.yaml "$bin_dir/kwok-stages.tmp/" 2>/dev/null || true
  rm -f "$bin_dir/kwok-stages.tmp/kustomization.yaml"
  chmod -R u+w "$bin_dir/kwok-stages.tmp"
  mv "$bin_dir/kwok-stages.tmp" "$bin_dir/kwok-stages"
fi

log "binaries ready in $bin_dir ($(( $(date +%s) - start ))s, $(du -sh "$bin_dir" | cut -f1))"
echo "$bin_dir"
