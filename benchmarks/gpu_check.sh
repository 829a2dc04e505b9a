#!/usr/bin/env bash
# The full-size checks that need a GPU, in one call of a lent device (docs/scaling.md, "On a GPU"):
#   1. the planner's memory prediction against a real training step of lens-3.8b (benchmarks/plan_check.py:
#      1024 px, batch 2, activation checkpointing; all 48 blocks on a card of >= 120 GiB, 24 on an 80 GB one,
#      whose memory one rank cannot give 48 blocks' fp32 weights, gradients, AdamW moments and EMA);
#   2. the transformer's sampling-call latency at batch 1 and 2 (CFG), forward+backward time, TFLOP/s and MFU
#      against the card's measured bf16 matmul rate, with per-block torch.compile and cuDNN attention
#      (benchmarks/transformer_speed.py).
# Figures go to stdout and to $OUT (the device tool's folder that comes back; runs/gpu-check elsewhere).
#
# The device image has PyTorch but not two pure-Python packages lensgen imports. Here, once, before the call:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl webdataset==1.0.2 braceexpand==0.1.7
# then run it through the device tool with carry [".whl"]:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/gpu.txt"
GIB=$(python3 -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30)")
DEPTH=()
if [ "${GIB:-0}" -lt 120 ]; then DEPTH=(--set 'model.overrides={num_layers: 24}'); fi
status=0
timeout 300 python3 benchmarks/plan_check.py --config configs/lens-3.8b.yaml --device cuda --resolution 1024 \
    --batch 2 --checkpointing on "${DEPTH[@]}" --json "$OUT/plan_check.json" 2>&1 | tee "$OUT/plan_check.txt" || status=1
timeout 240 python3 benchmarks/transformer_speed.py --device cuda --preset lens-3.8b --compile --attention cudnn \
    --skip-diffusers --json "$OUT/transformer_speed.json" 2>&1 | tee "$OUT/transformer_speed.txt" || status=1
exit $status
