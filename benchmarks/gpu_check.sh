#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): bf16 matmul peak, SDPA kernels, qwen-image-s pretraining and SFT steps
# (tokens/s, MFU, peak memory), FSDP2 with compiled blocks, Engine vs transformers generate at batch 1/8/32.
# Under 8 minutes on one H100/H200; writes benchmarks/out/gpu_check.json and appends to benchmarks/RESULTS.md.
#   bash benchmarks/gpu_check.sh             # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run   # toy sizes on any machine (what CI runs): the script starts and ends
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
exec python benchmarks/gpu_check.py "$@"
