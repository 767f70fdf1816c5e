#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests (tests/test_cuda.py), then one meta-iteration's
# phases with the policy and the optimisation on the CPU and on the GPU, alternated twice per
# config (benchmarks/meta_step.py; torch threads: meta_step.py's auto setting unless
# OMP_NUM_THREADS is set; MODES: meta_step.py's --modes, default gauss_newton:1.0,exact:1.0).
# Every section has its own time limit, so the script ends within about 10 minutes.
#
#     bash benchmarks/gpu.sh [LOG_DIR] [CONFIG ...]    (default: . navigation halfcheetah-vel)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
shift || true
if [ $# -gt 0 ]; then configs=("$@"); else configs=(navigation halfcheetah-vel); fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
echo "CPU cores: $(nproc)"
timeout 200 python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_cuda.py 2>&1 |
    tee "$out/cuda_tests.log"
modes=${MODES:-gauss_newton:1.0,exact:1.0}
for env in "${configs[@]}"; do
    for device in cpu cuda cpu cuda; do
        timeout 60 python3 benchmarks/meta_step.py --env "$env" --device "$device" \
            --repeats 3 --modes "$modes" 2>&1 | tee -a "$out/meta_step_$env.log"
    done
done
