#!/usr/bin/env bash
# Every GPU measurement in one go, each step under its own time limit, for a machine with one GPU
# and torch, torchvision, lightning and torchmetrics installed (W&B and omegaconf not needed):
#
#     bash benchmarks/gpu_all.sh OUT_DIR [STEP ...]   # all steps, or the ones named
#
# Steps: fast_ops gpu_train train_overhead input_pipeline callback_overhead mining_overhead.
# Each step's table goes to OUT_DIR/<step>.txt (and to the terminal). A step that fails or runs
# out of time is reported and the next one runs. The limits add up to about 18 minutes; where one
# command may run at most 10, run it in two halves:
#     bash benchmarks/gpu_all.sh OUT fast_ops gpu_train train_overhead
#     bash benchmarks/gpu_all.sh OUT input_pipeline callback_overhead mining_overhead
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
shift || true
only=" $* "
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | grep -v -i warning | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!! $name ended with status $rc" | tee -a "$out/$name.txt"
}

# 1. the Triton kernels against PyTorch's ops on this GPU (forward and backward, fp32 and bf16)
step fast_ops 120 python -c "
import torch
from zflight.models.fast_ops import triton_works
for dtype in (torch.float32, torch.bfloat16):
    for channels_last in (False, True):
        ok = triton_works(torch.device('cuda'), dtype, channels_last)
        print(f'triton kernels, {dtype}, channels_last={channels_last}: {\"ok\" if ok else \"FAILED\"}')
"
# 2. training step: zflight vs the plain compiled loop (goal: zflight >= 1.3x plain)
step gpu_train 300 python benchmarks/gpu_train.py
# 3. zflight's step time against a plain loop with the same ops, batch 256, bf16, channels_last
step train_overhead 120 python benchmarks/train_overhead.py --size 224 --width 1.0 --batch 256 \
  --precision bf16-mixed
# 4. JPEG pipeline images/s (goal: at least the training throughput of step 2)
step input_pipeline 180 python benchmarks/input_pipeline.py --images 4096 --workers 16 --batch 256
# 5. visual callbacks measured on the GPU at ImageNet geometry (goal: under 2% of an epoch)
step callback_overhead 240 python benchmarks/callback_overhead.py --size 224 --width 1 \
  --train 4096 --val 2048
# 6. streaming top-9 mining on the GPU (goal: at most +5% of validation time)
step mining_overhead 120 python benchmarks/mining_overhead.py --accelerator gpu --repeats 15
