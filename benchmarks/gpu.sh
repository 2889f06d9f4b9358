#!/usr/bin/env bash
# The GPU measurements of locallearn, in one prepared run on one GPU (written for one H200 and a budget of
# about nine minutes). NOT RUN YET: no session so far has had a GPU, so neither the time nor the numbers
# are known; everything it calls is CPU-tested code (tests/test_gpu_script.py runs this script with
# --cpu-smoke, tests/test_benchmark_targets.py the GPU grids of benchmarks/run.py with --quick).
#
#     bash benchmarks/gpu.sh [FASHION_MNIST_DIR]
#
# Needs no install and no network: it runs the source tree (PYTHONPATH=src) with .venv/bin/python if there is
# one, else python3 (the device machine's, which has torch with CUDA, transformers, PyYAML, tqdm, matplotlib,
# scikit-learn). Fashion-MNIST: FASHION_MNIST_DIR, else data/fashion-mnist (copy the four official files
# there to carry them, 30 MB), else Debian's /usr/share/datasets/fashion-mnist.
#
# Writes into benchmarks/results/ (and, where $OUT is set, the same files as $OUT/gpu_results.tar.gz):
#   gpu_memory.*    ResNet-110, CIFAR size, batch 1024: torch.cuda.max_memory_allocated of e2e, checkpointing,
#                   InfoPro* K=2/3/4 (memory-balanced) and ContSup R0/R1E K=4/16, beside InfoPro's published GB
#   gpu_speed.*     the same configurations' step time as ratios to e2e, eager, and four of them compiled,
#                   with their multiply-adds
#   gpu_accuracy.*  Fashion-MNIST, all 60,000 training images: ResNet-32, every method (ContSup E and R1E),
#                   K=2/4/8/16, 3 seeds, one recipe for all cells (2 epochs, batch 512, peak lr 0.4, one epoch
#                   of per-step warm-up then cosine), with CUDA peak memory and images/s beside the test error.
#                   Four processes share the grid (--shard); the grid runs seed by seed, and whatever has not
#                   finished after ACCURACY_BUDGET_S seconds (default 270) is listed as not run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LL=("$PY" -m locallearn)
DATA=${1:-$([[ -d data/fashion-mnist ]] && echo data/fashion-mnist || echo /usr/share/datasets/fashion-mnist)}
RESULTS=benchmarks/results
CELLS=runs/bench/gpu-accuracy
DEVICE=cuda
SHARDS=4
BUDGET=${ACCURACY_BUDGET_S:-270}
RECIPE=(--epochs 2 --batch-size 512 --lr 0.4 --warmup-epochs 1 --option schedule=step)
SEEDS=0,1,2
if [[ "${1:-}" == "--cpu-smoke" ]]; then  # the same commands on tiny settings on a CPU: the script itself is tested
    DATA=${2:?}; RESULTS=${3:?}; CELLS=$RESULTS/cells; DEVICE=cpu; SHARDS=2; SEEDS=0
    RECIPE=(--epochs 1 --batch-size 128 --lr 0.1 --limit-train 256 --limit-test 128)
fi
GRID=(--models resnet32 --methods e2e,greedy,dgl,infopro,contsup --num-modules 2,4,8,16 --contexts E,R1E
      --dataset fashion_mnist --data-dir "$DATA" "${RECIPE[@]}" --seeds "$SEEDS" --device "$DEVICE" --out "$CELLS")
[[ $DEVICE == cpu ]] && GRID+=(--num-modules 4 --methods e2e,contsup --contexts R1E)
mkdir -p "$RESULTS" "$CELLS"
start=$(date +%s)
phase() { echo "== $(( $(date +%s) - start )) s: $*"; }
phase "$("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null

# 1 + 2. memory and speed in InfoPro's setting (benchmarks/run.py: gpu_grids); each file written when measured
if [[ $DEVICE == cuda ]]; then
    phase "memory and speed (ResNet-110, batch 1024)"
    "$PY" benchmarks/run.py --device cuda --gpu-only --rounds 10 --out "$RESULTS" || echo "benchmarks/run.py failed: $?"
fi

# 3. accuracy on Fashion-MNIST: four processes on the one GPU, each every fourth cell (each cell a run
#    directory: a stopped script resumes), stopped after the budget; then one pass writes the table from the
#    cells that finished.
phase "accuracy grid: $SHARDS shards, budget $BUDGET s"
pids=()
for i in $(seq 1 "$SHARDS"); do
    timeout --signal=INT --kill-after=30 "$BUDGET" "${LL[@]}" bench accuracy "${GRID[@]}" --shard "$i/$SHARDS" --quiet \
        > "$CELLS/shard$i.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a shard stopped with status $? (124/130: the budget ran out)"; done
phase "accuracy table"
"${LL[@]}" bench accuracy "${GRID[@]}" --collect
for ext in json csv md png; do cp "$CELLS/accuracy.$ext" "$RESULTS/gpu_accuracy.$ext" 2>/dev/null; done
phase "done; results in $RESULTS (gpu_*)"
if [[ -n "${OUT:-}" ]]; then
    tar -czf "$OUT/gpu_results.tar.gz" "$RESULTS"/gpu_* "$CELLS"/shard*.log "$CELLS"/cells/*/train.log 2>/dev/null
fi
