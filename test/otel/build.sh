#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the tracing tests export to (test/otel/collector: the Collector's
# OTLP receiver and a span-to-file exporter, Collector v0.165.0 pinned in its go.mod), once, into
#   ${KINFER_K8S_CACHE:-~/.cache/kinfer}/otelcol-<hash of go.mod, go.sum and main.go>
# and prints its path. A first build takes about 2 minutes on 2 cores; later runs return at once.
set -euo pipefail
here="$(cd "$(dirname "$0")/collector" && pwd)"
hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
out="${KINFER_K8S_CACHE:-$HOME/.cache/kinfer}/otelcol-$hash"
if [[ ! -x "$out" ]]; then
  mkdir -p "$(dirname "$out")"
  (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w" -o "$out.tmp" .) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"
