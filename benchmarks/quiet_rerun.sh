#!/usr/bin/env bash
# Issue 12's final benchmarks on a QUIET machine (nothing else running), then the target status
# table in benchmarks/README.md (between the status:begin/end markers) from their JSON:
#   step_speed.py W1 b128/b1024 (5 rounds)            -> results/step_speed.{json,md,png}
#   step_speed.py W2, W4 (chunk of 5 steps, 3 rounds) -> results/step_speed_conv.{json,md,png}
#   ensemble_vs_torch.py 8 MLP / 8 ResNet-20 members  -> results/ensemble_vs_torch.{json,md,png}
#   status_table.py                                    -> benchmarks/README.md
# About 9-10 minutes on 2 quiet cores (estimated from CPU times under load) with PyTorch + torchdistill installed (pip install '.[bench]').
#
#   bash benchmarks/quiet_rerun.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python}"
read -r load _ < /proc/loadavg
echo "quiet_rerun: 1-minute load ${load} before the run (quiet = about 0-1 on 2 cores)" >&2
"$py" "$here/step_speed.py" --workloads W1_b128 W1_b1024 --reps 5
"$py" "$here/step_speed.py" --workloads W2 W4 --chunk 5 --reps 3 \
  --impls kdjax_chunk torchdistill torch --name step_speed_conv
"$py" "$here/ensemble_vs_torch.py" --models mlp resnet20 --reps 3
"$py" "$here/status_table.py"
