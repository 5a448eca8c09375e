#!/usr/bin/env bash
# On a machine with a CUDA GPU: the device and precision tests, then a short benchmark (DGA vs
# LoRA s/step and peak GPU memory in fp32 and bf16; evaluation fp32 vs bf16 on Banking77; the
# served box's throughput at 1 and 16 clients in float32 and bfloat16). Results land in
# benchmarks/results/gpu/ beside the others. Well under ten minutes on one recent GPU.
#
#   bash benchmarks/gpu/check.sh            # from the repository root
#   bash benchmarks/gpu/check.sh --skip-tests   # the benchmark parts only (tests run before)
#
# Needs exotune installed with a CUDA build of PyTorch (not the CPU one constraints.txt pins) and,
# for the Banking77 parts, the datasets in $EXOTUNE_DATA (default ../shared/datasets); without
# them the steps run on synthetic texts and the evaluation and served parts are skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
export EXOTUNE_DATA="${EXOTUNE_DATA:-../shared/datasets}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to PyTorch ' + torch.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
status=0
if [ "${1:-}" != "--skip-tests" ]; then
    echo "== tests (devices and precision)"
    timeout 240 python -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_devices_pairs.py \
        tests/test_devices_cuda.py tests/test_train.py -m "not real" 2>&1 | tee "$OUT/tests.txt" | tail -5 || status=1
fi
echo "== DGA vs LoRA s/step and peak memory, fp32 / bf16"
timeout 120 python benchmarks/gpu/steps.py --out "$OUT" --data-dir "$EXOTUNE_DATA" || status=1
if [ -d "$EXOTUNE_DATA/banking77" ]; then
    echo "== evaluation fp32 vs bf16 on Banking77 (DGA trained 1 epoch, zero-shot)"
    EXOTUNE_BENCH_DEVICE=cuda timeout 180 exotune bench precision --data-dir "$EXOTUNE_DATA" --out-dir "$OUT" \
        > "$OUT/precision.log" 2>&1 || status=1
    tail -6 "$OUT/precision.log"
    echo "== served throughput at 1 and 16 clients"
    timeout 180 python benchmarks/gpu/served.py --out "$OUT" --data-dir "$EXOTUNE_DATA" || status=1
else
    echo "no Banking77 under $EXOTUNE_DATA: evaluation and served parts skipped"
fi
echo "results in $OUT (exit $status)"
exit $status
