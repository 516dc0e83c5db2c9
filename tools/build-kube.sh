#!/bin/sh
# Builds kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes) and etcd
# (go.etcd.io/etcd/server/v3) from the Go module proxy into a per-machine cache outside
# the clone, once: a second run (or another clone on the same machine) finds them there.
# Usage: tools/build-kube.sh [DEST]   (default: $KUBE_TOOLS_DIR or ~/.cache/proxyless-mesh/kube-v1.37.2)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-${KUBE_TOOLS_DIR:-$HOME/.cache/proxyless-mesh/kube-v1.37.2}}
bins="kube-apiserver kube-controller-manager kubectl etcd"
missing=""
for b in $bins; do [ -x "$dest/$b" ] || missing="$missing $b"; done
if [ -z "$missing" ]; then
	echo "kube tools cached in $dest"
	exit 0
fi
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go (1.26+) is needed to build the Kubernetes test tools" >&2; exit 1; }
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Two cores are shared by everything on the machine: two compile jobs at a time.
export GOFLAGS="-trimpath -buildvcs=false" GOMAXPROCS=${GOMAXPROCS:-2} CGO_ENABLED=0
start=$(date +%s)
# What `kubectl version` and the API server's /version report (the module has no git).
v=k8s.io/component-base/version
kube_ldflags="-s -w -X $v.gitVersion=v1.37.2 -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean"
for b in $missing; do
	case $b in
	etcd) (cd "$here/etcd" && go build -p 2 -ldflags="-s -w" -o "$tmp/etcd" .) ;;
	*) (cd "$here/kube" && go build -p 2 -ldflags="$kube_ldflags" -o "$tmp/$b" "k8s.io/kubernetes/cmd/$b") ;;
	esac
	mv "$tmp/$b" "$dest/$b"
	echo "built $b in $(( $(date +%s) - start )) s"
done
du -sh "$dest"
