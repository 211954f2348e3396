// The CustomResourceDefinitions of prometheus-operator and KEDA that deploy/ uses. Their Go modules carry
// the CRD YAML (example/prometheus-operator-crd, config/crd/bases); test/k8s/build.sh downloads them at
// these versions and copies the CRDs into the control-plane cache, with Flagger's (artifacts/flagger).
module kinfer.dev/test/k8s/crds

go 1.26.0

require (
	github.com/fluxcd/flagger v1.36.1
	github.com/kedacore/keda/v2 v2.21.0
	github.com/prometheus-operator/prometheus-operator v0.85.0
)
