#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in stages sized for the device tool's
# 10-minute command limit. Results land in $OUT (default benches/results) and are meant to be
# committed under benches/results/. Several stages run back to back in one call, each with an
# optional time limit in seconds (stage:seconds), so a call never runs past the tool's limit and
# what a cut-off stage finished stays on disk:
#
#   bash scripts/gpu_session.sh tests:240 bench64:330
#
#   tests     pytest -m gpu (kernels at full shapes, graphs vs eager, NVML) and the end-to-end
#             kernel tests on CUDA
#   kernels   per-op micro-benchmarks (CUDA-graph replay and back-to-back launch medians, GB/s vs copy bandwidth)
#   bench     the DCGAN-32/64 + WGAN-GP throughput matrix against every baseline
#   bench32   the same, split over calls when one might pass 10 minutes (compile-max autotunes
#   bench64     every conv shape): DCGAN-32 b64/b256, DCGAN-64 b256, WGAN-GP 64 b64; the JSON is
#   benchgp     rewritten after every row, so a stage cut off keeps its finished rows
#   engine    the engine's design choice: its whole-iteration CUDA graph vs Inductor's
#             reduce-overhead per phase, max-autotune inside graphs, and eager phases captured
#             without torch.compile (graphs-eager, channels_last), and the penalty compiled or
#             eager inside the graph (graphs vs graphs-eagerpen)
#   profile   profile report of the fastgan step (HTML + JSON + trace)
#
# Through the device tool (at most 8 files, 2 folders deep come back from its $OUT), write to a
# scratch folder and pack it:
#   T=$OUT; OUT=/tmp/res bash scripts/gpu_session.sh tests:180 kernels:330; tar czf $T/res.tgz -C /tmp/res .
#
# A session has 30 minutes of device time and the machine is released after 30 s idle, so run the
# stages most valuable first: tests, bench64 (the DCGAN-64 b256 targets), benchgp, bench32,
# kernels, engine, profile. Extra arguments: $TEST_ARGS for pytest (default -n 8 when pytest-xdist
# is there: the compile tests are CPU-bound), $BENCH_ARGS for the bench stages.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: gpu_session.sh STAGE[:SECONDS]... (tests kernels bench bench32 bench64 benchgp engine profile)" >&2; exit 2; }
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
day=$(date +%Y-%m-%d)
BENCH_ARGS=${BENCH_ARGS:-}
if [ -z "${TEST_ARGS+x}" ]; then
  TEST_ARGS=""; python3 -c "import xdist" 2>/dev/null && TEST_ARGS="-n 8"
fi
# Modes ordered so the rows the targets compare (issue #4: fastgan against the tutorial loop and against
# compile max-autotune) finish first if a stage is cut off; compile-max autotunes longest.
MODES=eager-tutorial,fastgan,compile-max,eager-best,fastgan:fuse-trainer,compile,compile-ro,fastgan:graphs-eager,fastgan:fuse
run_stage() {
local stage=$1
case "$stage" in
  tests)   # the gpu-marked tests, then the device-agnostic end-to-end ones that on CUDA run the real kernels
           { python3 -m pytest -m gpu -q -p no:cacheprovider $TEST_ARGS tests
             python3 -m pytest -q -p no:cacheprovider $TEST_ARGS tests/test_variants_triton.py \
               tests/test_op_penalty_paths.py tests/test_fusion.py; } 2>&1 | tee "$OUT/gpu-tests-$dev-$day.log" ;;
  kernels) # CUDA-graph replays first (GPU time: what the targets and the graphed training step see),
           # then back-to-back launches (host launch work + GPU time per call, as an eager loop pays them)
           # (the full batch_norm_act matrix took ~190 s on an H100; the others run --quick to fit a call)
           for b in batch_norm_act "norm_misc --quick" "losses --quick"; do
             set -- $b
             python3 "benches/gpu_$1.py" ${2:-} --cudagraph --out "$OUT/kernels-$1-graph-$dev-$day.json" 2>&1 \
               | tee -a "$OUT/kernels-$dev-$day.log"
           done
           for b in batch_norm_act norm_misc losses; do
             python3 "benches/gpu_$b.py" --quick --out "$OUT/kernels-$b-$dev-$day.json" 2>&1 | tee -a "$OUT/kernels-$dev-$day.log"
           done ;;
  bench)   python3 scripts/gpu_bench.py --out "$OUT" --modes $MODES $BENCH_ARGS 2>&1 | tee "$OUT/bench-$dev-$day.log" ;;
  bench32) python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:32:64,dcgan:32:256 --tag 32 --modes $MODES $BENCH_ARGS 2>&1 \
             | tee "$OUT/bench32-$dev-$day.log" ;;
  bench64) python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:64:256 --tag 64 --modes $MODES $BENCH_ARGS 2>&1 \
             | tee "$OUT/bench64-$dev-$day.log" ;;
  benchgp) python3 scripts/gpu_bench.py --out "$OUT" --cases wgan-gp:64:64 --tag gp --modes $MODES $BENCH_ARGS 2>&1 \
             | tee "$OUT/benchgp-$dev-$day.log" ;;
  engine)  python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:32:64,dcgan:64:256,wgan-gp:64:64 --tag engine \
             --modes eager-tutorial,fastgan:compile,fastgan:compile-ro,fastgan:graphs,fastgan:graphs-max,fastgan:graphs-eager,fastgan:graphs-eagerpen $BENCH_ARGS 2>&1 \
             | tee "$OUT/engine-$dev-$day.log" ;;
  profile) python3 scripts/gpu_profile.py --out "$OUT/profile-$dev-$day" 2>&1 | tee "$OUT/profile-$dev-$day.log" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
}
for arg in "$@"; do
  stage=${arg%%:*}; secs=${arg#*:}; [ "$secs" = "$arg" ] && secs=0
  echo "=== stage $stage (limit ${secs}s) $(date -u +%T)"
  if [ "$secs" -gt 0 ]; then
    export -f run_stage; export OUT dev day TEST_ARGS BENCH_ARGS MODES
    timeout --kill-after=10 "$secs" bash -c "run_stage $stage"; rc=$?
    [ $rc -eq 124 ] && echo "=== stage $stage hit its ${secs}s limit"
  else
    run_stage "$stage"
  fi
done
