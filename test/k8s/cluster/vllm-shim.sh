#!/bin/sh
# `vllm` in the cluster tests' stand-in for the vllm/vllm-openai image (images.ts): `vllm serve MODEL
# [flags]` runs kinfer-sim, which takes vLLM's command line, from the image's /app. vLLM listens on every
# interface unless --host says otherwise; kinfer-sim's default is loopback, so the shim says it.
if [ "$1" != serve ]; then
  echo "vllm: only 'vllm serve' is simulated" >&2
  exit 2
fi
shift
exec /app/bin/kinfer-sim --host 0.0.0.0 "$@"
