#!/usr/bin/env bash
# Build the pinned upstream control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) from Go modules into a cache folder outside the checkout, or reuse it.
#
# The cache key is the pinned versions plus a hash of both wrapper modules' go.mod/go.sum and the
# Go version, so changing a pin builds into a new folder and an old build is never half-reused.
# Prints the folder that holds bin/ on its last line. Nothing is downloaded but Go modules.
#
#   ci/upstream/build.sh            build if needed, print the folder
#   ci/upstream/build.sh --print    print the folder only (no build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_MOD="$HERE/kubernetes"
ETCD_MOD="$HERE/etcd"

if ! command -v go >/dev/null 2>&1; then
    echo "ci/upstream/build.sh: Go is not installed (need Go >= 1.26 on PATH to build the upstream" \
         "Kubernetes control plane); install Go, then run this again." >&2
    exit 2
fi

pinned() {  # pinned version of module $2 in go.mod $1
    awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m && $2 ~ /^v/ {print $2}' "$1/go.mod" | head -1
}
K8S_VERSION="$(pinned "$K8S_MOD" k8s.io/kubernetes)"
ETCD_VERSION="$(pinned "$ETCD_MOD" go.etcd.io/etcd/server/v3)"
GO_VERSION="$(go env GOVERSION)"
DIGEST="$(cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum" "$0" \
          | { cat; echo "$GO_VERSION"; } | sha256sum | cut -c1-12)"
CACHE_ROOT="${DASK_K8S_UPSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-k8s-backend/upstream}"
OUT="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$DIGEST"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler)

if [ "${1:-}" = "--print" ]; then
    echo "$OUT"
    exit 0
fi

complete() {
    [ -f "$OUT/COMPLETE" ] || return 1
    for b in "${BINARIES[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done
}

if complete; then
    echo "upstream binaries: reusing $OUT (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION)" >&2
    echo "$OUT"
    exit 0
fi

echo "upstream binaries: building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION with $GO_VERSION into $OUT" >&2
mkdir -p "$CACHE_ROOT"
STAGE="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

# Version stamps, as upstream's hack/lib/version.sh sets them, so /version reports the release.
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS="$LDFLAGS -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$MINOR'"
    LDFLAGS="$LDFLAGS -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$BUILD_DATE'"
    LDFLAGS="$LDFLAGS -X '$pkg.gitCommit=module-$K8S_VERSION'"
done

start=$(date +%s)
(cd "$K8S_MOD" && go build -trimpath -ldflags "$LDFLAGS" -o "$STAGE/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
(cd "$ETCD_MOD" && go build -trimpath \
    -ldflags "-s -w -X 'go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION'" \
    -o "$STAGE/bin/etcd" go.etcd.io/etcd/server/v3)
end=$(date +%s)

printf 'kubernetes %s\netcd %s\ngo %s\nbuild_seconds %s\n' \
    "$K8S_VERSION" "$ETCD_VERSION" "$GO_VERSION" "$((end - start))" > "$STAGE/COMPLETE"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
echo "upstream binaries: built in $((end - start)) s" >&2
echo "$OUT"
