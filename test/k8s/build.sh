#!/usr/bin/env bash
# Builds the Kubernetes control plane for the tests, once, into a cache outside the repository:
#   ${KINFER_K8S_CACHE:-~/.cache/kinfer}/k8s-v<version>/{kube-apiserver,kube-scheduler,etcd}
# from the Go modules pinned in test/k8s/control-plane and test/k8s/etcd. Prints the directory.
# The first build downloads the modules and compiles for several minutes; later runs return at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/control-plane/go.mod")"
etcd_version="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")"
out="${KINFER_K8S_CACHE:-$HOME/.cache/kinfer}/k8s-${version}-etcd-${etcd_version}"
mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
if [[ ! -x "$out/kube-apiserver" || ! -x "$out/kube-scheduler" ]]; then
  (cd "$here/control-plane" && go build -trimpath -ldflags="-s -w" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler) >&2
fi
if [[ ! -x "$out/etcd" ]]; then
  (cd "$here/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd" .) >&2
fi
echo "$out"
