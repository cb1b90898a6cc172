#!/bin/bash
# Issue 17 in one command, on a machine with one CUDA GPU (the device tool's; prepared by gpu_prepare.sh).
# Each step is time-boxed so that one 10-minute call does as much as it can and always returns its records:
#   1. the suite's GPU paths: the tests parametrised over devices (CUDA included where present)
#   2. the benchmarks of docs/benchmarks.md (JSON and tables)
#   3. the tuned fixed-vs-dynamic comparison at full size (all 55 000 training images, preact_resnet18),
#      λ hyperparameters transferred from the CPU study's tuning (docs/results/fashion_1k/tuning*),
#      5 seeds, several runs at a time on the one GPU; then its controls. The report is made afterwards
#      on any machine: python -m mixlab.report <records> --out docs/results/fashion_full_gpu
# Outputs go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
STUDY_SECONDS=${STUDY_SECONDS:-330} EPOCHS=${EPOCHS:-15} JOBS=${JOBS:-6}
log() { echo "[$(date -u +%T)] $*" | tee -a "$OUT/session.log"; }
log "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
python -m pip install -q --no-deps --no-index .whl/*.whl 2>&1 | tail -1
python -m pip install -q --no-deps --no-index --find-links .whl/maxflow PyMaxflow 2>&1 | tail -1  # else puzzlemix is left out
python -c "import torch, torchvision, mixlab; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/session.log"
DATA=$PWD/data/fashion-mnist  # passed as data.root below

log "1. tests on CUDA"
timeout 90 python -m pytest -q -x -p no:cacheprovider tests/test_mixing.py tests/test_pairing.py tests/test_lam.py \
    -k "cuda or device" > "$OUT/tests_cuda.txt" 2>&1; log "tests rc=$? ($(tail -1 "$OUT/tests_cuda.txt"))"

log "2. benchmarks"
timeout 60 python scripts/bench_mixing.py --repeats 5 --out "$OUT/bench_mixing.json" > "$OUT/bench_mixing.txt" 2>&1
timeout 90 python scripts/bench_train.py step --repeats 3 --out "$OUT/bench_step.json" > "$OUT/bench_step.txt" 2>&1
timeout 60 python scripts/bench_optimal.py --step --repeats 3 --out "$OUT/bench_optimal.json" > "$OUT/bench_optimal.txt" 2>&1
log "benchmarks done"

log "3. the full-size comparison, $EPOCHS epochs, $JOBS at a time, for at most $STUDY_SECONDS s"
L="hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS hydra.sweep.dir=$OUT/compare data.root=$DATA"
timeout "$STUDY_SECONDS" python -m mixlab -m experiment=fashion_full trainer.epochs=$EPOCHS trainer.val_every=0 \
    tuned=docs/results/fashion_1k/tuning/tuned.yaml 'seed=0,1,2,3,4' $L > "$OUT/compare.log" 2>&1
log "comparison rc=$? ($(grep -l completed "$OUT"/compare/*/summary.json 2>/dev/null | wc -l) runs completed)"
find "$OUT/compare" -name last.pt -delete
log "done"
