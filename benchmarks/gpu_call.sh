#!/usr/bin/env bash
# One call of the next GPU session's plan (BENCHMARKS.md, "Next GPU session") on the lent machine, run from the
# repository root with .whl carried (benchmarks/gpu_wheels.sh makes it here). Installs the wheels, runs part 1 or 2
# under time limits that end inside one call's 10 minutes, and packs every result (JSON, logs, profiles) into one
# file, $OUT/part<N>.tgz, since a call brings back at most 8 files:
#   part 1: the adaptation rows with operator counts, host syncs and profiles, then CUDA graphs with the time left
#   part 2: adaptation at batch 32, generation, then scoring and classifiers
# Every benchmark prints each row ("measured: {...}") as it is measured, so a stopped one still reports its rows.
#
#   bash benchmarks/gpu_call.sh 1       # as the device call's command; then 2 in the next call
set -u
part=${1:?usage: gpu_call.sh 1|2}
out=${OUT:?OUT names the folder whose files come back}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHON=python3
results=/tmp/results
mkdir -p "$results"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$results/device_part$part.txt"
case $part in
1)
    timeout 400 python3 benchmarks/adaptation.py --model sd15_random --batch 8 --out "$results/gpu_adaptation.json" \
        --profile "$results/profiles" 2>&1 | tee "$results/gpu_adaptation.log"
    ONLY="adaptation_cudagraphs" COMPILE_S=150 bash benchmarks/gpu.sh "$results"
    ;;
2)
    ONLY="adaptation_batch32 generation scoring_and_classifiers" LARGE_BATCH_S=180 GENERATION_S=240 SCORING_S=120 \
        bash benchmarks/gpu.sh "$results"
    ;;
*) echo "part must be 1 or 2, got $part"; exit 2 ;;
esac
tar czf "$out/part$part.tgz" -C /tmp results
ls -l "$out"
