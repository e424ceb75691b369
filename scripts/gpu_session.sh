#!/usr/bin/env bash
# Every GPU check and benchmark the issues ask for, in one batched call on the lent GPU machine.
#
# Here, once:   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                 --platform manylinux_2_17_x86_64 -d .whl transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 \
#                 multiprocess==0.70.19      (and `mkdir -p .git/info; echo /.whl/ >> .git/info/exclude`)
# Device tool:  run(command="bash scripts/gpu_session.sh STAGE", carry=[".whl"])
#               STAGE: tests | capture | ablation | all (all fits the 10-minute limit only if nothing is slow)
#               tests runs the half-precision parity matrix first (tests/test_half_precision.py, -m gpu) and
#               writes its table (half_precision_table.log, to compare with docs/half_precision.md)
# Figures land in $OUT (JSON per benchmark, logs); copy them into experiments/ with the command that made them.
# SMOKE=1 runs the same plumbing on a CPU with tiny sizes (what CI-less checking of this script does here).
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"

if [ -d .whl ] && ! python3 -c "import transformer_lens" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # headscope from this tree, no install needed
device=cuda; capture_sizes="8x2048 8x8192"; ablation_size="8 256"; table_dtypes=float32,bfloat16,float16
if [ "${SMOKE:-0}" = 1 ]; then device=cpu; capture_sizes="1x64"; ablation_size="1 16"; table_dtypes=float16; fi

run() {  # name, command...: log to $OUT/name.log, keep going after a failure, say how it ended
    local name=$1; shift
    echo "::: $name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    echo "::: $name: exit $? ($(date +%T))"
    tail -n 15 "$OUT/$name.log"
}

python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
    | tee "$OUT/machine.txt"
if [ "$stage" = tests ] || [ "$stage" = all ]; then
    # First the half-precision parity matrix on CUDA (issue 21), then its table, then every other GPU test.
    run half_precision_tests python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_half_precision.py
    run half_precision_table python3 scripts/half_precision_table.py --device $device \
        --dtypes $table_dtypes --json "$OUT/half_precision_$device.json"
    run gpu_tests python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" --ignore tests/test_half_precision.py tests
fi
if [ "$stage" = capture ] || [ "$stage" = all ]; then
    for size in $capture_sizes; do
        run "capture_$size" python3 scripts/bench_capture.py --device $device --model random --dtype bfloat16 \
            --batch "${size%x*}" --seq "${size#*x}" --json "$OUT/capture_$size.json"
    done
fi
if [ "$stage" = ablation ] || [ "$stage" = all ]; then
    set -- $ablation_size
    (cd scripts && run "ablation_$1x$2" python3 bench_ablation.py --device $device --batch "$1" --seq "$2" \
        --json "$OUT/ablation_$1x$2.json")
fi
