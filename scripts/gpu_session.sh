#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in stages that each fit the device tool's
# 10-minute command limit. Results land in $OUT (the device tool brings that folder back) and
# are meant to be committed under benches/results/.
#
#   bash scripts/gpu_session.sh tests     # pytest -m gpu (kernels at full shapes, graphs vs eager, NVML)
#   bash scripts/gpu_session.sh kernels   # per-op micro-benchmarks (do_bench medians, GB/s vs copy bandwidth)
#   bash scripts/gpu_session.sh bench     # the DCGAN-32/64 + WGAN-GP throughput matrix against every baseline
#   bash scripts/gpu_session.sh bench32   # the same, split in two calls when one might pass 10 minutes
#   bash scripts/gpu_session.sh bench64   #   (compile-max autotunes every conv shape); the JSON is rewritten
#                                         #   after every row, so a call cut off keeps its finished rows
#   bash scripts/gpu_session.sh engine    # the engine's design choice: its whole-iteration CUDA graph vs
#                                         #   Inductor's reduce-overhead per phase, and max-autotune inside graphs
#   bash scripts/gpu_session.sh profile   # profile report of the fastgan step (HTML + JSON + trace)
#
# A session has 30 minutes of device time and the machine is released after 30 s idle, so run the
# stages back to back, most valuable first: tests, bench64 (the DCGAN-64 b256 and WGAN-GP targets),
# bench32, kernels, engine, profile. Commit whatever came back under benches/results/.
set -uo pipefail
stage=${1:?usage: gpu_session.sh tests|kernels|bench|bench32|bench64|engine|profile [extra args for the stage]}
shift
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
day=$(date +%Y-%m-%d)
case "$stage" in
  tests)   # the gpu-marked tests, then the device-agnostic end-to-end ones that on CUDA run the real kernels
           { python3 -m pytest -m gpu -q -p no:cacheprovider "$@" tests
             python3 -m pytest -q -p no:cacheprovider "$@" tests/test_variants_triton.py \
               tests/test_op_penalty_paths.py tests/test_fusion.py; } 2>&1 | tee "$OUT/gpu-tests-$dev-$day.log" ;;
  kernels) for b in batch_norm_act norm_misc losses; do
             python3 "benches/gpu_$b.py" --out "$OUT/kernels-$b-$dev-$day.json" 2>&1 | tee -a "$OUT/kernels-$dev-$day.log"
           done ;;
  bench)   python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench-$dev-$day.log" ;;
  bench32) python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:32:64,dcgan:32:256 --tag 32 "$@" 2>&1 \
             | tee "$OUT/bench32-$dev-$day.log" ;;
  bench64) python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:64:256,wgan-gp:64:64 --tag 64 "$@" 2>&1 \
             | tee "$OUT/bench64-$dev-$day.log" ;;
  engine)  python3 scripts/gpu_bench.py --out "$OUT" --cases dcgan:32:64,dcgan:64:256,wgan-gp:64:64 --tag engine \
             --modes eager-tutorial,fastgan:compile,fastgan:compile-ro,fastgan:graphs,fastgan:graphs-max "$@" 2>&1 \
             | tee "$OUT/engine-$dev-$day.log" ;;
  profile) python3 scripts/gpu_profile.py --out "$OUT/profile-$dev-$day" 2>&1 | tee "$OUT/profile-$dev-$day.log" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
