#!/usr/bin/env bash
# The engine on CUDA in one command: exactness tests, then the engine benchmark, then a summary.
#
#   benchmarks/gpu_check.sh              # needs a CUDA device; exits 2 without one
#   benchmarks/gpu_check.sh --allow-cpu  # runs on the CPU where there is no GPU (a dry run)
#   benchmarks/gpu_check.sh --quick      # the benchmark at its smoke size
#
# Needs only python3 with torch, numpy, scipy and pytest (no flask, celery, database or
# network): the tests run with --noconftest and import nothing but the engine and
# tests/reference.py. PYTHON=... picks another interpreter. Exit status 0 when all passed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.
# Only pytest itself: no plugin an installed package registers (they may import anything).
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
PY=${PYTHON:-python3}
allow_cpu=0
quick=()
for arg in "$@"; do
  case "$arg" in
    --allow-cpu) allow_cpu=1 ;;
    --quick) quick=(--quick) ;;
    *) echo "usage: $0 [--allow-cpu] [--quick]" >&2; exit 2 ;;
  esac
done

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export SHIFTSCORE_DEVICE=cuda
  "$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
elif [ "$allow_cpu" = 1 ]; then
  export SHIFTSCORE_DEVICE=cpu
  echo "device: no CUDA device, running on the CPU (--allow-cpu)"
else
  echo "no CUDA device visible to $PY (torch.cuda.is_available() is False); use --allow-cpu for a CPU dry run" >&2
  exit 2
fi

log_dir=$(mktemp -d)
"$PY" -m pytest -p no:cacheprovider --noconftest -q -W ignore::DeprecationWarning \
  tests/unit/test_engine_device.py tests/unit/test_engine.py tests/unit/test_shift_exactness.py \
  tests/unit/test_engine_speed_paths.py 2>&1 | tee "$log_dir/tests.log"
tests_status=${PIPESTATUS[0]}

"$PY" -m benchmarks.run "${quick[@]}" engine 2>&1 | tee "$log_dir/bench.log"
bench_status=${PIPESTATUS[0]}

echo
echo "==================== gpu_check summary ===================="
echo "device:           $SHIFTSCORE_DEVICE"
echo "exactness tests:  $([ "$tests_status" = 0 ] && echo PASSED || echo "FAILED (exit $tests_status)") — $(tail -n 1 "$log_dir/tests.log")"
echo "engine benchmark: $([ "$bench_status" = 0 ] && echo RAN || echo "FAILED (exit $bench_status)")"
grep -E '^\| (LeNet|ResNet)' "$log_dir/bench.log" || true
echo "logs:             $log_dir"
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ]
