#!/usr/bin/env bash
# Builds the Kubernetes control plane for the tests, once, into a cache outside the repository:
#   ${KINFER_K8S_CACHE:-~/.cache/kinfer}/k8s-v<version>-etcd-v<version>/{kube-apiserver,kube-scheduler,kubectl,etcd}
# from the Go modules pinned in test/k8s/control-plane and test/k8s/etcd, and copies the CRDs that deploy/
# needs (prometheus-operator's, KEDA's and Flagger's, from the modules pinned in test/k8s/crds) into crds/ there.
# Prints the directory.
# The first build downloads the modules and compiles for several minutes; later runs return at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The versions pinned in the go.mod files (in a require line or block).
version="$(awk '$1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes") { print $NF; exit }' "$here/control-plane/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" || ($1 == "require" && $2 == "go.etcd.io/etcd/server/v3") { print $NF; exit }' "$here/etcd/go.mod")"
if [[ -z "$version" || -z "$etcd_version" ]]; then
  echo "build.sh: cannot read the pinned versions from the go.mod files" >&2
  exit 1
fi
out="${KINFER_K8S_CACHE:-$HOME/.cache/kinfer}/k8s-${version}-etcd-${etcd_version}"
mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
if [[ ! -x "$out/kube-apiserver" || ! -x "$out/kube-scheduler" || ! -x "$out/kubectl" ]]; then
  (cd "$here/control-plane" && go build -trimpath -ldflags="-s -w" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl) >&2
fi
if [[ ! -x "$out/etcd" ]]; then
  (cd "$here/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd" .) >&2
fi
# CRDs: the modules carry their YAML; ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject,
# TriggerAuthentication and Flagger's (Canary, MetricTemplate, AlertProvider, in one file) are used.
crds="$out/crds-$(sha256sum "$here/crds/go.sum" | cut -c1-12)"
if [[ ! -d "$crds" ]]; then
  dirs="$(cd "$here/crds" && go mod download -json github.com/prometheus-operator/prometheus-operator github.com/kedacore/keda/v2 github.com/fluxcd/flagger |
    awk -F'"' '$2 == "Dir" { print $4 }')"
  mkdir -p "$crds.tmp"
  for dir in $dirs; do
    for f in "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml \
      "$dir"/config/crd/bases/keda.sh_{scaledobjects,triggerauthentications}.yaml; do
      [[ -f "$f" ]] && cp "$f" "$crds.tmp/"
    done
    [[ -f "$dir/artifacts/flagger/crd.yaml" ]] && cp "$dir/artifacts/flagger/crd.yaml" "$crds.tmp/flagger.app_crds.yaml"
  done
  if [[ "$(ls "$crds.tmp" | wc -l)" -ne 6 ]]; then
    echo "build.sh: expected 6 CRD files, got: $(ls "$crds.tmp")" >&2
    exit 1
  fi
  mv "$crds.tmp" "$crds"
fi
ln -sfn "$(basename "$crds")" "$out/crds"
echo "$out"
