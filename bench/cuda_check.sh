#!/usr/bin/env bash
# bench/cuda_check.sh: lnorm's CUDA backend on a machine with an NVIDIA GPU, in one command.
#
#   bash bench/cuda_check.sh                          # everything; logs and tables under $OUT
#   LNORM_CHECK_DRY=1 bash bench/cuda_check.sh        # print the steps, run nothing
#   LNORM_CHECK_ARCH=90 bash bench/cuda_check.sh      # no GPU: the two builds only (timing them)
#
# Steps, for the GPU's own architecture (nvidia-smi's compute_cap, 9.0 -> 90):
#   build          pip install --no-build-isolation --no-deps --no-index into $WORK/site, with
#                  -Ccmake.define.LNORM_CUDA=ON and CMAKE_CUDA_ARCHITECTURES=<arch> (no network)
#   selfcheck-nvcc nvcc -arch=sm_<arch> of a tiny main over lnorm/cuda/testing/selfcheck.hpp
#   selfcheck      the self-check's full case set on the GPU ("N passed, M failed"); these two run
#                  in the background beside the build
#   import         lnorm from $WORK/site: its CUDA backend compiled and a device seen
#   pytest         python -m pytest -m cuda tests/test_cuda.py
#   bench          python bench/bench_cuda.py --out $OUT/RESULTS_CUDA.md (the full sweep)
# A failed step is reported and the later steps still run, except those that need what it made
# (import, pytest and bench need the build; selfcheck needs selfcheck-nvcc): they are skipped. Each
# step has a time cap, and all of them share one budget (LNORM_CHECK_BUDGET, 480 s by default), so
# the script ends within about 8 minutes. A summary table is printed last (and kept in summary.md).
#
# Expected durations. Measured on the 2-core development machine (no GPU; shared, load 2-5 from
# other jobs) for sm_90 on 2026-12-07, with LNORM_CHECK_ARCH=90: the build from scratch 407 s (pip,
# CMake, ninja; per file: _lnorm_calls_half.cpp 355 s and _lnorm_calls_float.cpp 304 s, the CPU
# module's two big files, 100-180 s each in quieter earlier builds; _lnorm_cuda.cu 69 s;
# _lnorm.cpp 24 s; nanobind ~5 s each), a rebuild with the build folder kept 3 s; selfcheck-nvcc
# 25 s alone (it finished within the build here). On the device machine (16 cores: ninja builds
# the files side by side, selfcheck-nvcc beside them) the build takes about as long as its largest
# file: ~2-3 min. On the GPU (estimates, not yet run there): import ~5 s, selfcheck ~15-40 s (2,526
# cases), pytest ~1 min, bench ~1-2 min (72 shapes x 4 ops x 30 repetitions). Total ~4-6 min.
# Caps: build 330 s, selfcheck-nvcc 240 s, import 60 s, selfcheck 120 s, pytest 240 s, bench
# 240 s, all within the 480 s budget; the run tool's own start and transfers come on top.
#
# Environment:
#   OUT                    where logs and tables go (default bench/out/cuda_check); at most 8
#                          files are written there, flat: env.log build.log selfcheck.log
#                          import.log pytest.log bench.log RESULTS_CUDA.md summary.md
#   PYTHON                 the interpreter with torch, numpy, pytest, nanobind, scikit-build-core
#                          (default python3)
#   LNORM_CHECK_WORK       build folder and install target (default /tmp/lnorm_cuda_check; kept,
#                          so a rerun on the same machine rebuilds incrementally)
#   LNORM_CHECK_ARCH       architecture to build for (e.g. 90) instead of the GPU's; with no GPU
#                          visible only the builds run
#   LNORM_CHECK_BUDGET     seconds for all steps together (default 480)
#   LNORM_CHECK_BUILD_CAP  seconds for the build step (default 330; more on a small machine)
#   LNORM_CHECK_BENCH_ARGS extra arguments for bench_cuda.py (e.g. "--quick")
#   LNORM_CHECK_DRY=1      print the plan and exit
#   LNORM_CHECK_ALL_STEPS=1  with no GPU, run the GPU steps all the same (they fail or measure
#                          nothing: a test of this script's reporting)
#
# On the device machine (the run tool): command `bash bench/cuda_check.sh`, timeout_s 540; $OUT is
# set there and its files come back.
set -o pipefail
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/out/cuda_check}
PY=${PYTHON:-python3}
WORK=${LNORM_CHECK_WORK:-/tmp/lnorm_cuda_check}
BUDGET=${LNORM_CHECK_BUDGET:-480}
BENCH_ARGS=${LNORM_CHECK_BENCH_ARGS:-}
DRY=${LNORM_CHECK_DRY:-0}

log() { echo "[$(date '+%H:%M:%S') +${SECONDS}s] $*"; }

# ---- the GPU and the compiler ---------------------------------------------------------------------

GPU_NAME="" GPU_CAP="" GPU_COUNT=0
if command -v nvidia-smi >/dev/null 2>&1; then
  if q=$(nvidia-smi --query-gpu=compute_cap,name --format=csv,noheader 2>&1) && [ -n "$q" ]; then
    GPU_COUNT=$(echo "$q" | grep -c .)
    GPU_CAP=$(echo "$q" | head -n1 | cut -d, -f1 | tr -d ' ')
    GPU_NAME=$(echo "$q" | head -n1 | cut -d, -f2- | sed 's/^ *//')
  else
    NO_GPU_WHY="nvidia-smi found no GPU: ${q:-no output}"
  fi
else
  NO_GPU_WHY="nvidia-smi is not installed"
fi
if [ -n "${LNORM_CHECK_ARCH:-}" ]; then
  ARCH=$LNORM_CHECK_ARCH
elif [ -n "$GPU_CAP" ]; then
  ARCH=$(echo "$GPU_CAP" | tr -d '.')
else
  ARCH=""
fi
HAVE_GPU=0
[ -n "$GPU_CAP" ] && HAVE_GPU=1

NVCC=""
for c in "${CUDACXX:-}" /usr/local/cuda/bin/nvcc "$(command -v nvcc 2>/dev/null)"; do
  if [ -n "$c" ] && [ -x "$c" ]; then NVCC=$c; break; fi
done

SITE=$WORK/site
BUILD=$WORK/build
SELFCHECK=$WORK/selfcheck

plan() {
  cat <<EOF
cuda_check.sh plan (GPU: ${GPU_NAME:-none}${GPU_CAP:+, compute capability $GPU_CAP}; arch: ${ARCH:-?}; nvcc: ${NVCC:-not found})
  OUT=$OUT  WORK=$WORK  PYTHON=$PY  budget ${BUDGET}s
  1 build           $PY -m pip install --no-build-isolation --no-deps --no-index -v --target $SITE -Cbuild-dir=$BUILD -Ccmake.define.LNORM_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=${ARCH:-<arch>} $ROOT  > build.log
  2 selfcheck-nvcc  $NVCC -std=c++17 -O3 -arch=sm_${ARCH:-<arch>} -I$ROOT/cpp/include $WORK/selfcheck.cu -o $SELFCHECK  (beside 1)  > selfcheck.log
  3 selfcheck       $SELFCHECK  (the full case set, once 2 is done, beside 1)  >> selfcheck.log
  4 import          PYTHONPATH=$SITE $PY -c 'import lnorm; lnorm.config() has cuda_compiled and cuda_devices > 0'  > import.log
  5 pytest          PYTHONPATH=$SITE $PY -m pytest -m cuda tests/test_cuda.py  > pytest.log
  6 bench           PYTHONPATH=$SITE $PY bench/bench_cuda.py --out $OUT/RESULTS_CUDA.md $BENCH_ARGS  > bench.log
  then a summary table (summary.md)
EOF
}

if [ "$DRY" = 1 ]; then
  plan
  [ "$HAVE_GPU" = 1 ] || echo "(no GPU visible here: ${NO_GPU_WHY:-?}; a real run would stop at once unless LNORM_CHECK_ARCH is set)"
  exit 0
fi
if [ -z "$NVCC" ]; then
  echo "cuda_check.sh: nvcc not found (set CUDACXX, or put the CUDA toolkit's bin on PATH)" >&2
  exit 2
fi
if [ "$HAVE_GPU" = 0 ] && [ -z "${LNORM_CHECK_ARCH:-}" ]; then
  echo "cuda_check.sh: no NVIDIA GPU visible (${NO_GPU_WHY:-?}): nothing to check here." >&2
  echo "  Run it on a machine with a GPU, or set LNORM_CHECK_ARCH=90 to time the builds only;" >&2
  echo "  LNORM_CHECK_DRY=1 prints the steps." >&2
  exit 2
fi
if ! [[ "$ARCH" =~ ^[0-9]+a?$ ]]; then
  echo "cuda_check.sh: architecture '$ARCH' is not a number like 90 (compute capability '$GPU_CAP')" >&2
  exit 2
fi

mkdir -p "$OUT" "$WORK" || exit 2
log "lnorm CUDA check: GPU ${GPU_NAME:-none (builds only)}, sm_$ARCH, OUT=$OUT, budget ${BUDGET}s"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
  echo "arch: sm_$ARCH  nvcc: $NVCC"
  "$NVCC" --version | tail -n 2
  echo "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  echo "cores: $(nproc)"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi 2>&1
} >"$OUT/env.log" 2>&1

# ---- steps ----------------------------------------------------------------------------------------

NAMES=() STATUS=() SECS=() NOTES=()
record() { NAMES+=("$1"); STATUS+=("$2"); SECS+=("$3"); NOTES+=("$4"); }

# limit CAP: seconds this step may take (its cap, or what is left of the budget).
limit() {
  local left=$((BUDGET - SECONDS))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# status_of RC: ok, or why not.
status_of() {
  case "$1" in
    0) echo ok ;;
    124 | 137) echo "TIMED OUT" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}

# step NAME CAP LOG CMD...: run CMD with a time limit, its output appended to LOG; sets LAST_STATUS
# and LAST_SECS for the caller to record (with a note).
step() {
  local name=$1 cap=$2 logf=$3
  shift 3
  local lim
  lim=$(limit "$cap")
  if [ "$lim" -lt 5 ]; then
    log "$name: skipped, the ${BUDGET}s budget is spent"
    LAST_SECS=0
    LAST_STATUS="skipped (budget spent)"
    return 1
  fi
  log "$name: start (limit ${lim}s, log $(basename "$logf"))"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$lim" "$@" >>"$logf" 2>&1
  rc=$?
  local st
  st=$(status_of "$rc")
  log "$name: $st after $((SECONDS - t0))s"
  if [ "$rc" != 0 ]; then
    tail -n 15 "$logf" | sed 's/^/    | /'
  fi
  LAST_SECS=$((SECONDS - t0))
  LAST_STATUS=$st
  return "$rc"
}

skip() { log "$1: skipped ($2)"; record "$1" "skipped" 0 "$2"; }

cat >"$WORK/selfcheck.cu" <<'EOF'
#include <lnorm/cuda/testing/selfcheck.hpp>
int main(int c, char** v) { return lnorm::cuda::testing::selfcheck_main(c, v); }
EOF
for f in build selfcheck import pytest bench; do : >"$OUT/$f.log"; done  # this run's logs only

# selfcheck-nvcc, then selfcheck on the GPU, in the background beside the build (the build
# keeps the CPUs busy, the self-check the GPU and one core). The binary is not rebuilt when it is
# newer than the CUDA headers, as on a rerun on the same machine.
RUN_GPU=0
{ [ "$HAVE_GPU" = 1 ] || [ "${LNORM_CHECK_ALL_STEPS:-0}" = 1 ]; } && RUN_GPU=1
SC_DONE=$WORK/selfcheck-nvcc.done
SC_RUN_DONE=$WORK/selfcheck.done
rm -f "$SC_DONE" "$SC_RUN_DONE"
SC_FRESH=0
if [ -x "$SELFCHECK" ] && [ -z "$(find "$ROOT/cpp/include/lnorm/cuda" -newer "$SELFCHECK" -print -quit)" ]; then
  SC_FRESH=1
  log "selfcheck-nvcc: $SELFCHECK is newer than the CUDA headers: not rebuilt"
else
  rm -f "$SELFCHECK"
fi
SC_LIMIT=$(limit 240)
SC_RUN_LIMIT=120
log "selfcheck: start in the background (nvcc limit ${SC_LIMIT}s, run limit ${SC_RUN_LIMIT}s, log selfcheck.log)"
(
  t0=$SECONDS
  if [ "$SC_FRESH" = 1 ]; then
    echo "0 0 up to date" >"$SC_DONE"
  else
    timeout --kill-after=10 "$SC_LIMIT" "$NVCC" -std=c++17 -O3 "-arch=sm_$ARCH" "-I$ROOT/cpp/include" \
      "$WORK/selfcheck.cu" -o "$SELFCHECK" >>"$OUT/selfcheck.log" 2>&1
    echo "$? $((SECONDS - t0)) beside the build" >"$SC_DONE"
  fi
  if [ "$RUN_GPU" = 1 ] && [ -x "$SELFCHECK" ]; then
    echo "---- run: $SELFCHECK ----" >>"$OUT/selfcheck.log"
    t1=$SECONDS
    timeout --kill-after=10 "$SC_RUN_LIMIT" "$SELFCHECK" >>"$OUT/selfcheck.log" 2>&1
    echo "$? $((SECONDS - t1))" >"$SC_RUN_DONE"
  fi
) &
SC_PID=$!

# build
rm -rf "$SITE"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
BUILD_OK=0
if step build "${LNORM_CHECK_BUILD_CAP:-330}" "$OUT/build.log" "$PY" -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir \
  --disable-pip-version-check -v --target "$SITE" "-Cbuild-dir=$BUILD" -Ccmake.define.LNORM_CUDA=ON \
  "-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCH" "-Ccmake.define.CMAKE_CUDA_COMPILER=$NVCC" "$ROOT"; then
  BUILD_OK=1
  record build ok "$LAST_SECS" "sm_$ARCH into $SITE"
else
  record build "$LAST_STATUS" "$LAST_SECS" "see build.log"
fi

wait "$SC_PID"
read -r rc sc_secs sc_note <"$SC_DONE" || { rc=1; sc_secs=0; sc_note="no result"; }
SC_STATUS=$(status_of "$rc")
log "selfcheck-nvcc: $SC_STATUS after ${sc_secs}s ($sc_note)"
[ "$rc" = 0 ] || tail -n 15 "$OUT/selfcheck.log" | sed 's/^/    | /'
record selfcheck-nvcc "$SC_STATUS" "$sc_secs" "$sc_note"

if [ "$HAVE_GPU" = 0 ] && [ "${LNORM_CHECK_ALL_STEPS:-0}" != 1 ]; then
  for s in import selfcheck pytest bench; do skip "$s" "no GPU"; done
else
  # import
  if [ "$BUILD_OK" = 1 ]; then
    if step import 60 "$OUT/import.log" env PYTHONPATH="$SITE" "$PY" -c '
import os, sys
import lnorm
c = lnorm.config()
print("lnorm", lnorm.__version__, "from", lnorm.__file__)
site = os.path.realpath(sys.argv[1])
assert os.path.realpath(lnorm.__file__).startswith(site + os.sep), f"lnorm was imported from {lnorm.__file__}, not from {site}: another installation (an editable one?) shadows it"
print({k: v for k, v in c.items() if "cuda" in k})
assert c["cuda_compiled"], "built without the CUDA backend"
assert c["cuda_devices"] > 0, "the CUDA backend sees no device"
from lnorm import _cuda
print("archs", _cuda.native().compiled_architectures())' "$SITE"; then
      record import ok "$LAST_SECS" "$(grep '^archs' "$OUT/import.log" | head -n1)"
    else
      record import "$LAST_STATUS" "$LAST_SECS" "$(grep -E 'Error' "$OUT/import.log" | tail -n1 | cut -c1-160)"
    fi
  else
    skip import "the build failed"
  fi

  # selfcheck (it ran beside the build)
  if [ -s "$SC_RUN_DONE" ]; then
    read -r rc sc_secs <"$SC_RUN_DONE"
    st=$(status_of "$rc")
    log "selfcheck: $st after ${sc_secs}s (beside the build)"
    [ "$rc" = 0 ] || tail -n 15 "$OUT/selfcheck.log" | sed 's/^/    | /'
    note=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/selfcheck.log" | tail -n1)
    # Its cases on device 1 count as passed without running where there is only one GPU.
    [ "$GPU_COUNT" -lt 2 ] && note="$note (device-1 cases pass unrun on one GPU)"
    record selfcheck "$st" "$sc_secs" "$note"
  else
    skip selfcheck "selfcheck-nvcc failed"
  fi

  # pytest
  if [ "$BUILD_OK" = 1 ]; then
    step pytest 240 "$OUT/pytest.log" env PYTHONPATH="$SITE" "$PY" -m pytest -m cuda tests/test_cuda.py -q \
      -p no:cacheprovider
    rc=$?
    note=$(grep -E '(passed|failed|error|skipped|deselected)' "$OUT/pytest.log" | grep -E ' in [0-9.]+s' | tail -n1 | tr -d '=' | sed 's/^ *//')
    st=$LAST_STATUS
    if [ "$rc" = 0 ] && ! echo "$note" | grep -q ' passed'; then st="FAILED (nothing passed)"; fi
    record pytest "$st" "$LAST_SECS" "$note"
  else
    skip pytest "the build failed"
  fi

  # bench
  if [ "$BUILD_OK" = 1 ]; then
    # shellcheck disable=SC2086
    step bench 240 "$OUT/bench.log" env PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 "$PY" bench/bench_cuda.py \
      --out "$OUT/RESULTS_CUDA.md" $BENCH_ARGS
    st=$LAST_STATUS
    note="$(grep -c 'NOT met' "$OUT/bench.log") goals not met; tables in RESULTS_CUDA.md"
    if grep -q "nothing to measure here" "$OUT/bench.log"; then
      st="FAILED (nothing measured)"
      note=$(grep -m1 "nothing to measure here" "$OUT/bench.log" | cut -c1-160)
    fi
    record bench "$st" "$LAST_SECS" "$note"
  else
    skip bench "the build failed"
  fi
fi

# ---- summary --------------------------------------------------------------------------------------

{
  echo "## lnorm CUDA check: ${GPU_NAME:-no GPU}, sm_$ARCH, $(date -u '+%Y-%m-%d %H:%M UTC'), ${SECONDS}s"
  echo
  echo "| step | status | seconds | note |"
  echo "| --- | --- | ---: | --- |"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} | ${NOTES[$i]} |"
  done
  if [ -s "$OUT/bench.log" ]; then
    echo
    grep -E '^- .*(met|measured)' "$OUT/bench.log" | head -n 8
  fi
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
FAILED=0
for s in "${STATUS[@]}"; do
  case "$s" in ok) ;; skipped) ;; *) FAILED=1 ;; esac
done
exit "$FAILED"
