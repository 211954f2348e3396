#!/usr/bin/env bash
# Builds the seed article's Go gateway (bench/reference/seed-gateway) once, into a cache outside the
# repository, and prints the binary's path:
#   ${KINFER_BENCH_CACHE:-~/.cache/kinfer}/seed-gateway-<hash of its sources>/seed-gateway
# The modules come from the Go module proxy (pinned by go.sum); later runs return at once. Exits non-zero
# (and bench/gateway-overhead.ts skips the target, saying why) when Go is missing or the build fails.
set -euo pipefail
here="$(cd "$(dirname "$0")/seed-gateway" && pwd)"
command -v go >/dev/null || { echo "build-seed-gateway.sh: go is not installed" >&2; exit 1; }
hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
out="${KINFER_BENCH_CACHE:-$HOME/.cache/kinfer}/seed-gateway-$hash"
if [[ ! -x "$out/seed-gateway" ]]; then
  mkdir -p "$out"
  (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$out/seed-gateway.tmp" .) >&2
  mv "$out/seed-gateway.tmp" "$out/seed-gateway"
fi
echo "$out/seed-gateway"
