#!/usr/bin/env bash
# benchmarks/gpu_check.sh — the prepared device check: `pytest -m gpu` and the five benchmarks at GPU sizes
# (random-weight Llamas of 0.5B–8B parameters built on the device, bf16), inside about 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--budget SECONDS] [--quick]
#
# Meant for a lent H100/H200 (no network there; torch 2.11 preinstalled; no sglang). Call it as ONE device
# command, e.g. run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540):
#   * wheels carried in .whl/ (sglang==0.5.23 and whatever else is missing there, see
#     /work/.library/device/README.md) are installed with `pip --no-index --no-deps --target /tmp/site`;
#   * without an importable sglang the benchmarks run with `--backend hf` (our step on transformers), and
#     the summary says so in capitals: such numbers are NOT the SGLang engine's;
#   * every item runs under `timeout`, and an item whose estimate no longer fits the budget is skipped
#     (recorded as SKIPPED in the summary) rather than started: the biggest model (8B) goes last;
#   * results: $OUT/gpu_results.tar.gz (all JSON + per-item logs) and $OUT/gpu_check.log; without $OUT they
#     stay under benchmarks/results/gpu/.
# The numbers a run produces are from a random-weight model: timings and memory are real, accuracies are not.
set -u -o pipefail

DRY=0
QUICK=""
BUDGET=${GPU_CHECK_BUDGET_S:-470}       # 8 min minus margin for packing results
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK="--quick" ;;
    --budget) shift; BUDGET="$1" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PY=${PYTHON:-python3}
RES=${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results/gpu}
LOGDIR=$RES/logs
SUMMARY=$RES/summary.txt
T0=$(date +%s)
BACKEND=sglang
EST_TOTAL=0

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

# run_item NAME ESTIMATE_S TIMEOUT_S CMD...: run CMD if ESTIMATE_S still fits the budget, under
# timeout min(TIMEOUT_S, budget left)
run_item() {
  local name=$1 est=$2 lim=$3; shift 3
  local elapsed=$(( $(date +%s) - T0 ))
  EST_TOTAL=$(( EST_TOTAL + est ))
  if [ "$DRY" = 1 ]; then
    printf '  %-28s est %4ss  timeout %4ss  %s\n' "$name" "$est" "$lim" "$*"
    return 0
  fi
  if [ $(( elapsed + est )) -gt "$BUDGET" ]; then
    say "SKIPPED $name: ${elapsed}s spent, estimate ${est}s would pass the ${BUDGET}s budget"
    return 0
  fi
  # never run past the budget: the timeout is cut to what is left
  [ $(( BUDGET - elapsed )) -lt "$lim" ] && lim=$(( BUDGET - elapsed ))
  say "start $name (estimate ${est}s, timeout ${lim}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$lim" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc = 124 ] || [ $rc = 137 ] && status="TIMED OUT"
  [ $rc != 0 ] && [ "$status" = ok ] && status="FAILED rc=$rc"
  say "done  $name: $status in $(( $(date +%s) - t ))s"
  grep -E '^\|' "$LOGDIR/$name.log" | tail -n 16 | tee -a "$SUMMARY"
  [ "$status" != ok ] && tail -n 15 "$LOGDIR/$name.log" | sed 's/^/    /' >>"$SUMMARY"
  return 0
}

finish() {
  [ "$DRY" = 1 ] && return
  say "total $(( $(date +%s) - T0 ))s"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    tar -C "$RES" -czf "$OUT/gpu_results.tar.gz" . 2>/dev/null
    cp "$SUMMARY" "$OUT/gpu_check.log" 2>/dev/null
  fi
}

if [ "$DRY" = 1 ]; then
  echo "gpu_check.sh --dry-run: nothing is run. It would:"
  echo "  1. print nvidia-smi -L and torch's view of the GPU ($PY)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "  2. install $(ls .whl/*.whl | wc -l) carried wheels from .whl/ into /tmp/site (pip --no-index --no-deps)"
  else
    echo "  2. find no .whl/ here: use the device image's packages only"
  fi
  echo "  3. check 'import sglang' (needs 0.5.23) and build + score a tiny SGLang runner (timeout 120s);"
  echo "     if either fails, run the benchmarks with --backend hf and say so in capitals"
  echo "  4. run, each under timeout, skipping what no longer fits ${BUDGET}s (results -> $RES):"
else
  mkdir -p "$LOGDIR"
  : >"$SUMMARY"
  trap finish EXIT
  say "host $(hostname), budget ${BUDGET}s"
  nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
  if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing $(ls .whl/*.whl | wc -l) carried wheels"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >"$LOGDIR/pip.log" 2>&1 || say "pip install of carried wheels FAILED (see logs/pip.log)"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export SGLANG_MEZO_BENCH_MODELS=${SGLANG_MEZO_BENCH_MODELS:-/tmp/sglang_mezo_bench_models}
  $PY -c 'import torch; c = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if c else "NO CUDA DEVICE")' \
    2>&1 | tee -a "$SUMMARY"
  if $PY -c 'import sglang, sys; sys.exit(0 if sglang.__version__ == "0.5.23" else 3)' >"$LOGDIR/sglang_import.log" 2>&1; then
    say "sglang 0.5.23 imports"
    $PY -c 'import sgl_kernel' >>"$LOGDIR/sglang_import.log" 2>&1 && say "sgl_kernel imports" \
      || say "sgl_kernel does NOT import (see logs/sglang_import.log)"
    # can it build a runner and score here? (tiny random Llama; CUDA: SGLang's default backends)
    if timeout --kill-after=10 120 $PY benchmarks/common.py --probe-sglang >"$LOGDIR/sglang_probe.log" 2>&1; then
      say "SGLang runner builds and scores: benchmarks use the SGLang engine ($(grep SGLANG_OK "$LOGDIR/sglang_probe.log"))"
    else
      BACKEND=hf
      say "SGLANG RUNNER FAILED TO BUILD OR SCORE (see logs/sglang_probe.log; last lines below): benchmarks run with --backend hf; their 'ours' numbers are sglang_mezo on TRANSFORMERS, not on the SGLang engine"
      tail -n 8 "$LOGDIR/sglang_probe.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    fi
  else
    BACKEND=hf
    say "NO USABLE SGLANG HERE (see logs/sglang_import.log): benchmarks run with --backend hf; their 'ours' numbers are sglang_mezo on TRANSFORMERS, not on the SGLang engine"
  fi
fi

# model sizes (random-weight Llama presets of benchmarks/common.py); GPU_CHECK_SIZES="tiny tiny tiny" makes
# a CPU smoke test of this script's mechanics
read -r S_SMALL S_MID S_BIG <<<"${GPU_CHECK_SIZES:-0.5b 1b 8b}"
B="--backend $BACKEND"
[ "$DRY" = 1 ] && B="--backend sglang|hf"
# pytest exit code 5 = no test carries the gpu marker (recorded as such in the log)
run_item pytest_gpu             60  90 $PY -m pytest -m gpu -q -p no:cacheprovider tests
run_item step_overhead_$S_SMALL     60 120 $PY benchmarks/step_overhead.py $QUICK $B --llama $S_SMALL --batch 16,64 --repeats 5 --out-dir "$RES/step_overhead_$S_SMALL"
run_item vs_mezo_reference_$S_MID   70 150 $PY benchmarks/vs_mezo_reference.py $QUICK $B --llama $S_MID --batch 16 --repeats 5 --out-dir "$RES/vs_mezo_reference_$S_MID"
run_item eval_throughput_$S_SMALL   50 120 $PY benchmarks/eval_throughput.py $QUICK $B --llama $S_SMALL --n 128 --repeats 3 --out-dir "$RES/eval_throughput_$S_SMALL"
# low-rank perturbations: 2n adapters vs none in one batch, SGLang's CUDA LoRA backend (triton; csgmv is
# --lora-backend csgmv). SGLang engine only: there is no hf fallback for multi-LoRA batching.
if [ "$BACKEND" = sglang ] || [ "$DRY" = 1 ]; then
  run_item lowrank_triton_$S_SMALL 60 120 $PY benchmarks/lowrank.py $QUICK --llama $S_SMALL --ns 1,4,8 --ranks 4 --repeats 3 --lora-backend triton --out-dir "$RES/lowrank_triton_$S_SMALL"
fi
run_item memory_$S_MID             120 180 $PY benchmarks/memory.py $QUICK $B --llama $S_MID --steps 2 --only inference,mezo_layerwise,mezo_inplace,hf_inference,mezo_reference,noise_native --noise-elements ${GPU_CHECK_NOISE_ELEMENTS:-1073741824} --out-dir "$RES/memory_$S_MID"
run_item drift_$S_SMALL             70 120 $PY benchmarks/drift.py $QUICK --llama $S_SMALL --cycles 10 --batch 2 --out-dir "$RES/drift_$S_SMALL"
run_item step_overhead_$S_BIG      150 240 $PY benchmarks/step_overhead.py $QUICK $B --llama $S_BIG --batch 16,64 --repeats 3 --out-dir "$RES/step_overhead_$S_BIG"

if [ "$DRY" = 1 ]; then
  echo "  5. pack $RES into \$OUT/gpu_results.tar.gz and copy the summary to \$OUT/gpu_check.log"
  echo "  Estimates add up to ${EST_TOTAL}s against a ${BUDGET}s budget: items that no longer fit when their turn"
  echo "  comes are skipped (the 8B item is last). Call it with timeout_s >= budget + 60 (start-up, packing)."
fi
exit 0
