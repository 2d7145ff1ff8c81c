#!/usr/bin/env bash
# One device call of the next GPU session's plan (BENCHMARKS.md, "Next GPU session"), run from the repository root
# on the lent machine with .whl carried (benchmarks/gpu_wheels.sh makes it here). A session has 15 minutes of device
# time, the machine's start included, so the plan is one call: it installs the wheels, then measures in order of
# what the open targets need, each under a time limit, and stops starting new work SECONDS (default 420) after it
# began. What it measured, with logs and profiles, is packed into one file, $OUT/results.tgz (a call brings back at
# most 8 files); every row is also printed as it is measured ("measured: {...}").
#
#   bash benchmarks/gpu_call.sh                   # the device call's command, with timeout_s about SECONDS + 60
#   bash benchmarks/gpu_call.sh 240 switches generation   # a second call, if time is left: these parts only
#
# The parts: adapt_b8 (our TI and LoRA against the references at batch 8, host syncs, profiles), adapt_b4 (the same
# at the paper's batch 4, with channels_last, no profile), adapt_b32 (the share of peak at batch 32), full (full
# fine-tuning at batch 8: UNet training with every weight's gradient, against train_dreambooth.py's loop),
# cudagraphs (TI compiled with CUDA graphs at batch 8), cudagraphs_b4 (the same at batch 4), cudagraphs_lora (LoRA
# compiled with CUDA graphs at batch 8: its compile took over 110 s on 2026-12-04), cgbackend_b4 (TI and LoRA at
# batch 4 with torch.compile's cudagraphs backend, model.compile=cudagraphs: CUDA graphs of the eager kernels, with
# no code generation to wait for), peak_b32 (TI and LoRA at batch 32, defaults against channels_last, which spares
# cuDNN's layout conversions: the share of peak), compile_b32 (TI at batch 32 compiled by torch.compile's default
# mode, with channels_last), switches (channels_last, TI's UNet under autocast, fp32 frozen weights, fp32 adapters at
# batch 8), checkpointing (TI, LoRA and full fine-tuning at batch 8, with and without stage.gradient_checkpointing:
# peak memory and what the recomputation costs), generation, scoring (FID/KID features and the classifiers, with the
# lines any host sync came from). With no part named, the plan's open questions run, in this order: PLAN
# (BENCHMARKS.md, "Next GPU session").
set -u
budget=${1:-420}
shift $(( $# > 0 ? 1 : 0 ))
every="adapt_b8 adapt_b4 adapt_b32 full cudagraphs cudagraphs_b4 cudagraphs_lora cgbackend_b4 peak_b32 compile_b32
       switches checkpointing generation scoring"
every=$(echo $every)
PLAN="adapt_b4 cgbackend_b4 peak_b32 scoring compile_b32 cudagraphs_b4 cudagraphs_lora checkpointing"
parts=${*:-$PLAN}
for part in $parts; do
    [[ " $every " == *" $part "* ]] || { echo "unknown part '$part'; the parts: $every"; exit 2; }
done
: "${OUT:?OUT names the folder whose files come back}"
DEADLINE=$(( SECONDS + budget ))
scratch=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" .whl/*.whl \
    || { echo "installing the carried wheels failed: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=$scratch/site:$PWD PYTHONUNBUFFERED=1 PYTHON=python3
out=$scratch/results
mkdir -p "$out"
source benchmarks/gpu.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
# the first build of the random SD1.5 weights saves them, every later build in this call (or a later call on the
# still-warm machine) loads them: about a second instead of half a minute of random draws per measured run
sd15=(--model sd15_random --set "model.weights_cache=${WEIGHTS_CACHE:-${TMPDIR:-/tmp}/stablesdg_weights_cache}")
for part in $parts; do
    case $part in
    adapt_b8) measure adaptation 180 adaptation "${sd15[@]}" --batch 8 --rows defaults --profile "$out/profiles" ;;
    adapt_b4) measure adaptation_batch4 120 adaptation "${sd15[@]}" --batch 4 --rows defaults channels_last ;;
    adapt_b32) measure adaptation_batch32 150 adaptation "${sd15[@]}" --batch 32 --steps 5 --warmup 2 --rows defaults ;;
    full) measure adaptation_full 120 adaptation "${sd15[@]}" --batch 8 --stages full --rows defaults ;;
    cudagraphs) measure adaptation_cudagraphs 150 adaptation "${sd15[@]}" --batch 8 --stages ti --only-compile \
                    --compile-mode reduce-overhead ;;
    cudagraphs_b4) measure adaptation_cudagraphs_batch4 150 adaptation "${sd15[@]}" --batch 4 --stages ti \
                       --only-compile --compile-mode reduce-overhead ;;
    cudagraphs_lora) measure adaptation_cudagraphs_lora 300 adaptation "${sd15[@]}" --batch 8 --stages lora \
                         --only-compile --compile-mode reduce-overhead ;;
    cgbackend_b4) measure adaptation_cgbackend_batch4 200 adaptation "${sd15[@]}" --batch 4 --only-compile \
                      --compile-mode cudagraphs ;;
    peak_b32) measure adaptation_peak_batch32 120 adaptation "${sd15[@]}" --batch 32 --steps 5 --warmup 2 \
                  --rows defaults channels_last ;;
    compile_b32) measure adaptation_compile_batch32 200 adaptation "${sd15[@]}" --batch 32 --steps 5 --warmup 2 \
                     --stages ti --only-compile ;;
    switches) measure adaptation_switches 200 adaptation "${sd15[@]}" --batch 8 \
                  --rows channels_last unet_under_autocast fp32_frozen_weights fp32_adapters ;;
    checkpointing) measure adaptation_checkpointing 200 adaptation "${sd15[@]}" --batch 8 --stages ti lora full \
                       --rows defaults gradient_checkpointing ;;
    generation) measure generation 200 generation "${sd15[@]}" --batch 8 --settings fast_off defaults dpmsolver ;;
    scoring) measure scoring_and_classifiers 100 scoring_and_classifiers --batch 32 --steps 5 --warmup 2 ;;
    esac
done
tar czf "$OUT/results.tgz" -C "$scratch" results
echo "== packed $(ls "$out" | wc -l) entries into results.tgz after $SECONDS s"
