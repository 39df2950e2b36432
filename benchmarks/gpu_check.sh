#!/usr/bin/env bash
# One GPU check, under 5 minutes on a single GPU. From the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default: python) has cellvi's dependencies and a CUDA build of torch;
# SCVI_PYTHON (default: PYTHON) has scvi-tools, or the scvi-tools line is skipped. It prints
#   1. the correctness checks of gpu_check.py (train on the GPU, h5ad round trip, GPU vs CPU
#      evaluation and latent),
#   2. the GPU tests of the test suite (tests with "gpu" in their name),
#   3. training cells/s on the bundled 10x PBMC data (5,030 cells x 2,000 genes), cellvi in
#      float32 and in bf16-mixed, and scvi-tools, on the same card, one after the other, with
#      the ELBO of all cells after training (bf16-mixed is worth making the GPU default only if
#      its ELBO matches float32's).
# Exit status: non-zero if a check or a test failed.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SCVI_PYTHON=${SCVI_PYTHON:-$PYTHON}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore
status=0

echo "== device"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi not found"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. correctness checks (benchmarks/gpu_check.py)"
timeout 150 "$PYTHON" benchmarks/gpu_check.py --epochs 20 || status=1

echo "== 2. GPU tests"
timeout 90 "$PYTHON" -m pytest -q -p no:cacheprovider -k gpu tests || status=1

echo "== 3. training speed on the same card (30 epochs, PBMC 10x)"
timeout 60 "$PYTHON" benchmarks/_gpu_speed.py --tool cellvi --precision 32-true || status=1
timeout 60 "$PYTHON" benchmarks/_gpu_speed.py --tool cellvi --precision bf16-mixed || status=1
if "$SCVI_PYTHON" -c "import scvi" 2>/dev/null; then
    timeout 90 "$SCVI_PYTHON" benchmarks/_gpu_speed.py --tool scvi || status=1
else
    echo '{"tool": "scvi", "skipped": "scvi-tools is not importable with SCVI_PYTHON"}'
fi
exit $status
