#!/usr/bin/env bash
# resnet32x4 -> resnet8x4 KD train step on an accelerator, float32 and bfloat16
# (benchmarks/gpu_check.py: images/s, step time, fraction of the measured bf16 matmul rate).
# Synthetic CIFAR-shaped inputs, nothing downloaded; under 5 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                 # GPU: batch 512, 300 steps per dtype
#   bash benchmarks/gpu_check.sh --batch 1024    # any gpu_check.py flag passes through
#   bash benchmarks/gpu_check.sh --cpu-smoke     # 2 steps on the CPU (the test suite's smoke)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " == *" --cpu-smoke "* ]]; then
  export JAX_PLATFORMS=cpu
  exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
fi
exec timeout 300 "${PYTHON:-python}" "$here/gpu_check.py" "$@"
