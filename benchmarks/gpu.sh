#!/usr/bin/env bash
# The GPU half of BENCHMARKS.md in one go: the SD1.5 architecture with random weights at 512 px, bf16
# (trainer=gpu), on the first GPU. Writes gpu_*.json and gpu_*.log into the results folder.
#
#   bash benchmarks/gpu.sh [results-folder]        # default: benchmarks/results
#
# Each benchmark runs under its own time limit in seconds (ADAPTATION_S, GENERATION_S, SCORING_S, COMPILE_S,
# LARGE_BATCH_S),
# so one that hangs or runs long cannot take the others' time; a stopped one has still printed every row it
# measured ("measured: {...}" lines in its log). PYTHON picks the interpreter (default: python); ONLY, a list of
# names, runs only those (e.g. ONLY="adaptation generation"). WEIGHTS_CACHE is the folder the random SD1.5 weights
# are saved in at their first build (default: stablesdg_weights_cache in $TMPDIR or /tmp; 4.3 GB). Sourced
# (benchmarks/gpu_call.sh), it only defines `measure`.

# measure NAME SECONDS SCRIPT ARGS...: benchmarks/SCRIPT.py ARGS --out $out/gpu_NAME.json, its output in
# $out/gpu_NAME.log, stopped after SECONDS; where DEADLINE (a time in $SECONDS's count) is set, also stopped
# 10 s before it, and not started with less than 30 s left.
measure() {
    local name=$1 limit=$2 script=$3
    shift 3
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    if [ -n "${DEADLINE:-}" ]; then
        local left=$(( DEADLINE - SECONDS - 10 ))
        if [ "$left" -lt 30 ]; then echo "== $name: skipped, ${left} s left"; return; fi
        if [ "$left" -lt "$limit" ]; then limit=$left; fi
    fi
    echo "== $name (at most ${limit} s)"
    local started=$SECONDS
    timeout "$limit" "${PYTHON:-python}" "benchmarks/$script.py" --out "$out/gpu_$name.json" "$@" 2>&1 \
        | tee "$out/gpu_$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $(( SECONDS - started )) s"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -u
    out=${1:-benchmarks/results}
    mkdir -p "$out"
    # the random weights are drawn once and loaded by every later run (WEIGHTS_CACHE: where they are kept)
    sd15=(--model sd15_random --set "model.weights_cache=${WEIGHTS_CACHE:-${TMPDIR:-/tmp}/stablesdg_weights_cache}")
    measure adaptation "${ADAPTATION_S:-900}" adaptation "${sd15[@]}" --batch 8
    # full fine-tuning: UNet training with every weight's gradient, the literal reading of the share-of-peak target
    measure adaptation_full "${ADAPTATION_S:-900}" adaptation "${sd15[@]}" --batch 8 --stages full
    measure generation "${GENERATION_S:-900}" generation "${sd15[@]}" --batch 8
    measure scoring_and_classifiers "${SCORING_S:-300}" scoring_and_classifiers --batch 32 --steps 5 --warmup 2
    measure adaptation_compile "${COMPILE_S:-1200}" adaptation "${sd15[@]}" --batch 8 --only-compile
    # CUDA graphs: replays the compiled step's kernels without launching each from the host
    measure adaptation_cudagraphs "${COMPILE_S:-1200}" adaptation "${sd15[@]}" --batch 8 --only-compile \
        --compile-mode reduce-overhead
    # the share of the bf16 peak at a batch where the kernels are large (the ratio is still taken at the same batch)
    measure adaptation_batch32 "${LARGE_BATCH_S:-900}" adaptation "${sd15[@]}" --batch 32 --steps 5 --warmup 2
fi
