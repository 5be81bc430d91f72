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

# run_item NAME ESTIMATE_S TIMEOUT_S CMD...: run CMD if ESTIMATE_S still fits the budget
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
  say "start $name (estimate ${est}s, timeout ${lim}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$lim" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc = 124 ] || [ $rc = 137 ] && status="TIMED OUT"
  [ $rc != 0 ] && [ "$status" = ok ] && status="FAILED rc=$rc"
  say "done  $name: $status in $(( $(date +%s) - t ))s"
  grep -E '^\|' "$LOGDIR/$name.log" | tail -n 12 | tee -a "$SUMMARY" >/dev/null
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
  echo "  3. check 'import sglang' (needs 0.5.23); without it, run the benchmarks with --backend hf and say so"
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
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' \
    2>&1 | tee -a "$SUMMARY"
  if $PY -c 'import sglang, sys; sys.exit(0 if sglang.__version__ == "0.5.23" else 3)' >"$LOGDIR/sglang_import.log" 2>&1; then
    say "sglang 0.5.23 imports: benchmarks use the SGLang engine"
    $PY -c 'import sgl_kernel' >>"$LOGDIR/sglang_import.log" 2>&1 && say "sgl_kernel imports" \
      || say "sgl_kernel does NOT import (see logs/sglang_import.log)"
  else
    BACKEND=hf
    say "NO USABLE SGLANG HERE (see logs/sglang_import.log): benchmarks run with --backend hf; their 'ours' numbers are sglang_mezo on TRANSFORMERS, not on the SGLang engine"
  fi
fi

B="--backend $BACKEND"
[ "$DRY" = 1 ] && B="--backend sglang|hf"
# pytest exit code 5 = no test carries the gpu marker (recorded as such in the log)
run_item pytest_gpu             60  90 $PY -m pytest -m gpu -q -p no:cacheprovider tests
run_item step_overhead_0.5b     60 120 $PY benchmarks/step_overhead.py $QUICK $B --llama 0.5b --batch 16,64 --repeats 5 --out-dir "$RES/step_overhead_0.5b"
run_item vs_mezo_reference_1b   70 150 $PY benchmarks/vs_mezo_reference.py $QUICK $B --llama 1b --batch 16 --repeats 5 --out-dir "$RES/vs_mezo_reference_1b"
run_item eval_throughput_0.5b   50 120 $PY benchmarks/eval_throughput.py $QUICK $B --llama 0.5b --n 128 --repeats 3 --out-dir "$RES/eval_throughput_0.5b"
run_item drift_0.5b             70 120 $PY benchmarks/drift.py $QUICK --llama 0.5b --cycles 10 --batch 4 --out-dir "$RES/drift_0.5b"
run_item memory_1b              90 180 $PY benchmarks/memory.py $QUICK $B --llama 1b --steps 2 --only inference,mezo_layerwise,mezo_inplace,hf_inference,mezo_reference,noise_native,noise_torch --noise-elements 1073741824 --out-dir "$RES/memory_1b"
run_item step_overhead_8b      150 240 $PY benchmarks/step_overhead.py $QUICK $B --llama 8b --batch 16,64 --repeats 3 --out-dir "$RES/step_overhead_8b"

if [ "$DRY" = 1 ]; then
  echo "  5. pack $RES into \$OUT/gpu_results.tar.gz and copy the summary to \$OUT/gpu_check.log"
  echo "  Estimates add up to ${EST_TOTAL}s against a ${BUDGET}s budget: items that no longer fit when their turn"
  echo "  comes are skipped (the 8B item is last). Call it with timeout_s >= budget + 60 (start-up, packing)."
fi
exit 0
