#!/usr/bin/env bash
# Builds the Kubernetes control plane for the tests, once, into a cache outside the repository:
#   ${KINFER_K8S_CACHE:-~/.cache/kinfer}/k8s-v<version>-etcd-v<version>/
#     {kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd,kwok,flagger,
#      prometheus,prometheus-operator,prometheus-adapter,keda,keda-adapter}
# from the Go modules pinned in test/k8s/control-plane, test/k8s/etcd, test/k8s/kwok, test/k8s/flagger,
# test/k8s/prometheus, test/k8s/prometheus-operator, test/k8s/prometheus-adapter and test/k8s/keda (the versions of all but the
# control plane are part of their file names in the cache, so that a new pin rebuilds them), and copies the
# CRDs that deploy/ needs
# (prometheus-operator's, KEDA's and Flagger's, from the modules pinned in test/k8s/crds) into crds/ there.
# Prints the directory.
# The first build downloads the modules and compiles for a long while (README, "Tests": the measured time);
# later runs return at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The versions pinned in the go.mod files (in a require line or block).
version="$(awk '$1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes") { print $NF; exit }' "$here/control-plane/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" || ($1 == "require" && $2 == "go.etcd.io/etcd/server/v3") { print $NF; exit }' "$here/etcd/go.mod")"
kwok_version="$(awk '$1 == "sigs.k8s.io/kwok" || ($1 == "require" && $2 == "sigs.k8s.io/kwok") { print $NF; exit }' "$here/kwok/go.mod")"
flagger_version="$(awk '$1 == "github.com/fluxcd/flagger" || ($1 == "require" && $2 == "github.com/fluxcd/flagger") { print $NF; exit }' "$here/flagger/go.mod")"
if [[ -z "$version" || -z "$etcd_version" || -z "$kwok_version" || -z "$flagger_version" ]]; then
  echo "build.sh: cannot read the pinned versions from the go.mod files" >&2
  exit 1
fi
# The build's own revision is part of the cache's name: bump it when the way the binaries are built changes.
out="${KINFER_K8S_CACHE:-$HOME/.cache/kinfer}/k8s-${version}-etcd-${etcd_version}-b2"
mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# The version the binaries report (`kubectl version`, the apiserver's /version), as a release build stamps
# it; without it they say v0.0.0-master, which clients that check the server's version refuse (Flagger).
minor="$(echo "$version" | cut -d. -f2)"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# Each command on its own, so that adding one to the list builds only that one in an existing cache.
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [[ ! -x "$out/$cmd" ]]; then
    (cd "$here/control-plane" && go build -trimpath -ldflags="$k8s_ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") >&2
    mv "$out/$cmd.tmp" "$out/$cmd"
  fi
done
if [[ ! -x "$out/etcd" ]]; then
  (cd "$here/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd" .) >&2
fi
if [[ ! -x "$out/kwok-$kwok_version" ]]; then
  (cd "$here/kwok" && go build -trimpath -ldflags="-s -w" -o "$out/kwok-$kwok_version.tmp" sigs.k8s.io/kwok/cmd/kwok) >&2
  mv "$out/kwok-$kwok_version.tmp" "$out/kwok-$kwok_version"
fi
ln -sfn "kwok-$kwok_version" "$out/kwok"
if [[ ! -x "$out/flagger-$flagger_version" ]]; then
  (cd "$here/flagger" && go build -trimpath -ldflags="-s -w" -o "$out/flagger-$flagger_version.tmp" github.com/fluxcd/flagger/cmd/flagger) >&2
  mv "$out/flagger-$flagger_version.tmp" "$out/flagger-$flagger_version"
fi
ln -sfn "flagger-$flagger_version" "$out/flagger"
# The operations loops' components (test/k8s/operations-loops.test.ts): <name>-<version>, linked as <name>.
#   component <name> <module dir> <module path> <package> [extra ldflags, %v the module version]
component() {
  local name="$1" dir="$here/$2" module="$3" pkg="$4" extra="${5:-}" v
  v="$(awk -v m="$module" '$1 == m || ($1 == "require" && $2 == m) { print $NF; exit }' "$dir/go.mod")"
  if [[ -z "$v" ]]; then
    echo "build.sh: $dir/go.mod pins no $module" >&2
    exit 1
  fi
  if [[ ! -x "$out/$name-$v" ]]; then
    (cd "$dir" && go build -trimpath -ldflags="-s -w ${extra//%v/$v}" -o "$out/$name-$v.tmp" "$pkg") >&2
    mv "$out/$name-$v.tmp" "$out/$name-$v"
  fi
  ln -sfn "$name-$v" "$out/$name"
}
# Prometheus's module versions are v0.<major><minor, 2 digits>.<patch> (v0.305.0 is v3.5.0): the release
# version is stamped as its own build stamps it, for `prometheus --version` (prometheus-operator renders
# configuration for the version the test reads there).
prometheus_module="$(awk '$1 == "github.com/prometheus/prometheus" || ($1 == "require" && $2 == "github.com/prometheus/prometheus") { print $NF; exit }' "$here/prometheus/go.mod")"
prometheus_release="$(echo "$prometheus_module" | sed -E 's/^v0\.([0-9])0?([0-9]+)\.([0-9]+)$/\1.\2.\3/')"
component prometheus prometheus github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/prometheus \
  "-X github.com/prometheus/common/version.Version=$prometheus_release -X github.com/prometheus/common/version.Branch=HEAD"
component prometheus-operator prometheus-operator github.com/prometheus-operator/prometheus-operator \
  github.com/prometheus-operator/prometheus-operator/cmd/operator
component prometheus-adapter prometheus-adapter sigs.k8s.io/prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter
component keda keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/operator
component keda-adapter keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/adapter
# kwok's stock stages for nodes (initialize; heartbeat with a lease), from its module: the kwok binary has
# none built in (only kwokctl adds them), and the cluster tests add their own pod stages.
stages="$out/kwok-stages-$kwok_version"
if [[ ! -d "$stages" ]]; then
  kwok_dir="$(cd "$here/kwok" && go mod download -json sigs.k8s.io/kwok | awk -F'"' '$2 == "Dir" { print $4 }')"
  mkdir -p "$stages.tmp"
  cp "$kwok_dir/kustomize/stage/node/fast/node-initialize.yaml" \
    "$kwok_dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" "$stages.tmp/"
  mv "$stages.tmp" "$stages"
fi
ln -sfn "kwok-stages-$kwok_version" "$out/kwok-stages"
# CRDs: the modules carry their YAML. All of prometheus-operator's and KEDA's (their operators refuse to
# start, or skip a controller, when one is missing: the operations-loops tests run both), and Flagger's
# (Canary, MetricTemplate, AlertProvider, in one file); deploy/ uses ServiceMonitor, PodMonitor,
# PrometheusRule, ScaledObject, Canary and MetricTemplate.
crds="$out/crds-$(sha256sum "$here/crds/go.sum" | cut -c1-12)"
if [[ ! -d "$crds" ]]; then
  dirs="$(cd "$here/crds" && go mod download -json github.com/prometheus-operator/prometheus-operator github.com/kedacore/keda/v2 github.com/fluxcd/flagger |
    awk -F'"' '$2 == "Dir" { print $4 }')"
  mkdir -p "$crds.tmp"
  for dir in $dirs; do
    for f in "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$dir"/config/crd/bases/*keda.sh_*.yaml; do
      [[ -f "$f" ]] && cp "$f" "$crds.tmp/"
    done
    [[ -f "$dir/artifacts/flagger/crd.yaml" ]] && cp "$dir/artifacts/flagger/crd.yaml" "$crds.tmp/flagger.app_crds.yaml"
  done
  if [[ "$(ls "$crds.tmp" | wc -l)" -ne 17 ]]; then
    echo "build.sh: expected 17 CRD files (prometheus-operator 10, KEDA 6, Flagger 1), got: $(ls "$crds.tmp")" >&2
    exit 1
  fi
  mv "$crds.tmp" "$crds"
fi
ln -sfn "$(basename "$crds")" "$out/crds"
echo "$out"
