#!/usr/bin/env bash
# Build a pinned `helm` from the Go module proxy into ~/.cache/phasegate/bin (once).
#
# Helm's release site is out of reach on the machines that build this project, and
# Debian bookworm has no helm package; `go install helm.sh/helm/v3/cmd/helm@<tag>`
# works (helm's go.mod has no replace directives). The ldflags are those of helm's own
# Makefile, so that `helm version` and the default Kubernetes version of
# `helm template` / `helm lint` (.Capabilities.KubeVersion) are right.
#
# Prints the path of the binary on stdout; progress goes to stderr.
# First build: about 5 minutes on 2 cores. Later runs: instant.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${PHASEGATE_CACHE:-$HOME/.cache/phasegate}"
DEST="$CACHE/bin/helm-$HELM_VERSION"
LINK="$CACHE/bin/helm"

log() { echo "[install-helm] $*" >&2; }

if [[ -x "$DEST/helm" ]]; then
  ln -sfn "helm-$HELM_VERSION/helm" "$LINK"
  echo "$LINK"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed: it is needed to build helm"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# Kubernetes version helm was built against (its client-go v0.X.Y means Kubernetes 1.X).
log "resolving helm.sh/helm/v3@$HELM_VERSION on the Go module proxy"
modfile="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -f "$modfile" ]] || { log "could not download helm.sh/helm/v3@$HELM_VERSION"; exit 1; }
need_go="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$modfile")"
have_go="$(go env GOVERSION | sed 's/^go//')"
if [[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]]; then
  log "helm $HELM_VERSION needs Go >= $need_go, this machine has $have_go (GOTOOLCHAIN=local)"
  exit 1
fi
client_go="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$modfile" | head -1)"
[[ -n "$client_go" ]] || { log "cannot read the k8s.io/client-go version of helm's go.mod"; exit 1; }

ldflags="-w -s"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done

tmp="$(mktemp -d "$CACHE/bin/.helm-build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE/bin"; mktemp -d "$CACHE/bin/.helm-build.XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
log "building helm $HELM_VERSION (Kubernetes 1.$client_go) with $(go env GOVERSION); the first build takes minutes"
start=$SECONDS
GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 1
  if (( (SECONDS - start) % 15 == 0 )) && kill -0 "$pid" 2>/dev/null; then
    log "still building... $((SECONDS - start))s"
  fi
done
wait "$pid"
"$tmp/helm" version --short >&2
mkdir -p "$DEST"
mv "$tmp/helm" "$DEST/helm"
ln -sfn "helm-$HELM_VERSION/helm" "$LINK"
log "built in $((SECONDS - start))s: $LINK"
echo "$LINK"
