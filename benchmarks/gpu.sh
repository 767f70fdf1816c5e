#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests (tests/test_cuda.py), then one meta-iteration's
# phases with the policy and the optimisation on the CPU and on the GPU, alternated twice per
# config (benchmarks/meta_step.py; torch threads: meta_step.py's auto setting unless
# OMP_NUM_THREADS is set; MODES: meta_step.py's --modes, default gauss_newton:1.0,exact:1.0).
# Every section has its own time limit, so the script ends within about 10 minutes.
# Then, with MuJoCo Warp installed (pip install -e ".[warp]"; issue 40): the warp sampler
# against the C backends at 40 tasks x 20 trajectories for half-cheetah and ant
# (benchmarks/sampler.py --sampler warp; goals on one H100: >= 500,000 and >= 300,000 env
# steps/s), then one full meta-iteration per family on each backend (3 iterations of
# `maml-rl train`, the first compiles: the figures are iterations 1 and 2; goals: half-cheetah
# <= 0.5 s, ant <= 1 s), about 6 more minutes. PARTS picks sections (default: all three):
#
#     bash benchmarks/gpu.sh [LOG_DIR] [CONFIG ...]    (default: . navigation halfcheetah-vel)
#     PARTS="tests warp" bash benchmarks/gpu.sh /tmp/logs
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
shift || true
if [ $# -gt 0 ]; then configs=("$@"); else configs=(navigation halfcheetah-vel); fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
echo "CPU cores: $(nproc)"
parts=${PARTS:-tests meta_step warp}
if [[ $parts == *tests* ]]; then
    timeout 300 python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_cuda.py \
        tests/test_warp.py 2>&1 | tee "$out/cuda_tests.log"
fi
modes=${MODES:-gauss_newton:1.0,exact:1.0}
if [[ $parts == *meta_step* ]]; then
    for env in "${configs[@]}"; do
        for device in cpu cuda cpu cuda; do
            timeout 60 python3 benchmarks/meta_step.py --env "$env" --device "$device" \
                --repeats 3 --modes "$modes" 2>&1 | tee -a "$out/meta_step_$env.log"
        done
    done
fi
if [[ $parts == *warp* ]] && python3 -c "import mujoco_warp" 2>/dev/null; then
    timeout 240 python3 benchmarks/sampler.py --sampler warp --device cuda \
        --envs halfcheetah-vel ant-vel --repeats 3 2>&1 | tee "$out/warp_sampler.log"
    runs=$(mktemp -d)
    for env in halfcheetah-vel ant-vel; do
        for sampler in warp native; do
            timeout 150 maml-rl train "$env" --out "$runs/$env-$sampler" --set device=cuda \
                --set sampler="$sampler" --set num_batches=3 --no-progress \
                >"$runs/$env-$sampler.log" 2>&1
            python3 - "$runs/$env-$sampler" "$env" "$sampler" <<'PY' | tee -a "$out/warp_meta_iteration.log"
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").open()]
for row in rows:
    s, o = row["time/sampling_s"], row["time/optimization_s"]
    print(f"{sys.argv[2]} sampler {sys.argv[3]} iteration {row['iteration']}: sampling "
          f"{s:.2f} s + optimisation {o:.2f} s = {s + o:.2f} s, return {row['returns/post_update']:.2f}")
PY
        done
    done
fi
