#!/usr/bin/env bash
# The GPU measurements of locallearn, in one prepared run on one GPU (written for one H200; about ten
# minutes is the aim). NOT RUN YET: no session so far has had a GPU, so neither the time nor the numbers
# are known; everything it calls is the CPU-tested code (tests/test_gpu_script.py runs it with --cpu-smoke).
#
#     bash benchmarks/gpu.sh [FASHION_MNIST_DIR]     # default: Debian's /usr/share/datasets/fashion-mnist
#
# Set-up first, with a CUDA build of torch:  make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# Writes into benchmarks/results/:
#   gpu_memory.*    ResNet-110, CIFAR size, batch 1024: torch.cuda.max_memory_allocated of e2e, checkpointing,
#                   InfoPro* K=2/3/4 (memory-balanced) and ContSup R0/R1E K=4/16, beside InfoPro's published GB
#   gpu_speed.*     the same configurations' step time as ratios to e2e, eager and compiled, with their MACs
#   gpu_accuracy.*  Fashion-MNIST, all 60,000 training images: ResNet-32, every method, K=2/4/8/16, 3 seeds,
#                   one recipe (batch 1024, lr 0.8 as the papers' CIFAR recipe, 15 epochs), with CUDA peak
#                   memory and images/s beside the test error
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LL=${LL:-.venv/bin/locallearn}
DATA=${1:-/usr/share/datasets/fashion-mnist}
RESULTS=benchmarks/results
CELLS=runs/bench/gpu-accuracy
DEVICE=cuda
EPOCHS=15
SEEDS=(0 1 2)
if [[ "${1:-}" == "--cpu-smoke" ]]; then  # the same commands on tiny settings on a CPU: the script itself is tested
    DATA=${2:-/usr/share/datasets/fashion-mnist}; RESULTS=${3:?}; CELLS=$RESULTS/cells; DEVICE=cpu; EPOCHS=1; SEEDS=(0)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
mkdir -p "$RESULTS" "$(dirname "$CELLS")"
start=$(date +%s)

# 1 + 2. memory and speed in InfoPro's setting (benchmarks/run.py: gpu_grids)
if [[ $DEVICE == cuda ]]; then
    $PY benchmarks/run.py --device cuda --gpu-only --rounds 10 --out "$RESULTS"
fi

# 3. accuracy on Fashion-MNIST: one process per seed, side by side on the one GPU (each cell a run directory;
#    an interrupted script resumes), then one pass that finds every cell finished and writes the table.
GRID=(--models resnet32 --methods e2e,greedy,dgl,infopro,contsup --num-modules 2,4,8,16 --contexts E,R1E
      --dataset fashion_mnist --data-dir "$DATA" --epochs "$EPOCHS" --batch-size 1024 --lr 0.8 --warmup-epochs 5
      --device "$DEVICE" --out "$CELLS")
if [[ $DEVICE == cpu ]]; then
    GRID+=(--limit-train 256 --limit-test 128 --batch-size 128 --num-modules 4 --methods e2e,contsup --contexts R1E)
fi
pids=()
for seed in "${SEEDS[@]}"; do
    $LL bench accuracy "${GRID[@]}" --seeds "$seed" --quiet > "$CELLS.seed$seed.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
seeds=$(IFS=,; echo "${SEEDS[*]}")
$LL bench accuracy "${GRID[@]}" --seeds "$seeds"
for ext in json csv md png; do cp "$CELLS/accuracy.$ext" "$RESULTS/gpu_accuracy.$ext"; done
echo "benchmarks/gpu.sh: done in $(( $(date +%s) - start )) s; results in $RESULTS (gpu_*)"
