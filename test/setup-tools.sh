#!/usr/bin/env bash
# What `npm test` needs beyond `npm ci`, set up before the suite runs (the first run takes several
# minutes; later runs find everything in place and return at once):
# - Debian packages: openssl (test certificates), iproute2 (network namespaces for the k8s tests'
#   replicas), chromium (the SDK's browser test, driven by playwright-core), prometheus (promtool and the
#   server the monitoring tests run). Installed with apt-get when missing and the machine allows it
#   (Debian or Ubuntu, as root); otherwise the script stops with one message naming what to install.
# - Go 1.26 (kwok v0.8.0 needs it; an older Go 1.21+ fetches it with GOTOOLCHAIN=auto), to build the
#   Kubernetes control plane and the cluster components from their Go modules (test/k8s/build.sh,
#   cached in ~/.cache/kinfer), and the OpenTelemetry Collector the tracing tests export to
#   (test/otel/build.sh, cached there too).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v ip >/dev/null || missing+=(iproute2)
command -v chromium >/dev/null || missing+=(chromium)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "npm test: installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "npm test needs these Debian packages: ${missing[*]}. Install them, e.g." >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    echo "and run npm test again." >&2
    exit 1
  fi
fi
if ! command -v go >/dev/null; then
  echo "npm test needs Go (1.26, or 1.21+ that fetches it: https://go.dev/dl/) to build the Kubernetes components of test/k8s." >&2
  exit 1
fi
test/k8s/build.sh >/dev/null
test/otel/build.sh >/dev/null
