#!/usr/bin/env bash
# The GPU check in one lent call of at most 9 minutes (the device allows 10 a command):
#
#   setup        install the carried wheels (.whl/*.whl)                       SETUP_S    45
#   probe        versions, one CuPy kernel and one fused call; FAILS FAST       PROBE_S    60
#   targets      the target cases: fused, torch bridge, eager, torch.compile    TARGETS_S 200
#   determinism  each fused target case 10 times, bitwise                       DETERMINISM_S 30
#   tests        the GPU tests (cupy and torch CUDA)                            TESTS_S   120
#   elementwise  the elementwise losses' loss+grad, fused against eager         ELEMENTWISE_S 30
#   sweep        the benchmark suite, in what is left                           SWEEP_S    60
#   summary      summary.md and the verdict (the exit status)                   SUMMARY_S  15
#
# Each stage runs under `timeout -s INT` with its own budget (the seconds above, each an
# environment variable), so that pytest and the benchmarks write their results before they
# stop (KILL 10 s later).  A budget is cut to what is left of TOTAL_S (540 s, 9 minutes)
# less 35 s kept for the summary, and a stage with under 10 s left is not started: the call
# stays within TOTAL_S whatever the stages do, leaving about 4 of the session's 15 minutes
# (after the machine's start) for a rerun of some stages.  Results are written as they
# come, into $OUT (or ./gpu-check-out when OUT is unset), at most 8 files, flat:
#   log.txt      everything printed          check.jsonl  the stage records, line by line
#   tests.xml    the JUnit report            sweep.json, sweep.md  the benchmark suite
#   summary.md   the table and the verdict   elementwise.md  the elementwise losses
# A rerun of some stages only: STAGES="targets determinism summary" (the records append).
# The exit status is non-zero when a stage failed, no target was measured, or the tests all
# skipped.
#
# --dry-run (or GPU_CHECK_DRY_RUN=1) runs every stage on the CPU at tiny sizes with the
# stand-ins of benchmarks/gpu_check.py: the plumbing, the budgets and the files, no speed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=cpu            # JAX must not take the GPU's memory
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHON="${PYTHON:-python3}"
STAGES="${STAGES:-setup probe targets determinism tests elementwise sweep summary}"
DRY=()
[ "$DRY_RUN" = 1 ] && DRY=(--dry-run)
exec > >(tee -a "$OUT/log.txt") 2>&1
STARTED=$SECONDS

TOTAL_S="${TOTAL_S:-540}"   # the whole call, whatever the stages' budgets say
RESERVE_S=35                 # kept back for the summary (and the kill grace before it)
# The output reaches log.txt through tee: let it drain before the call returns.
trap 'exec 1>&- 2>&-; sleep 1' EXIT

wanted() { [[ " $STAGES " == *" $1 "* ]]; }
# budget SECONDS: a stage's budget, cut to what the call has left (the summary's reserve
# kept back for every other stage); 0 when too little is left to start it.
budget() {
    local left=$(( TOTAL_S - (SECONDS - STARTED) - ${2:-$RESERVE_S} ))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -gt "$left" ]; then echo "$left"
    else echo "$1"; fi
}
# stage NAME SECONDS COMMAND...: the command under its budget; INT first, KILL 10 s later.
stage() {
    local name=$1 seconds=$2 began=$SECONDS status
    shift 2
    if [ "$seconds" -eq 0 ]; then
        echo "== $name: exit 124 after 0s (not started: the call's ${TOTAL_S}s are spent)"
        return 124
    fi
    echo "== $name (budget ${seconds}s, at $((SECONDS - STARTED))s)"
    timeout -s INT -k 10 "$seconds" "$@"
    status=$?
    echo "== $name: exit $status after $((SECONDS - began))s"
    return $status
}

if wanted setup && compgen -G ".whl/*.whl" > /dev/null; then
    stage setup "$(budget "${SETUP_S:-45}")" "$PYTHON" -m pip install -q --no-index --no-deps \
        --no-compile --no-cache-dir --upgrade --target /tmp/arrayloss-site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/arrayloss-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if wanted probe; then
    PROBE_BUDGET="$(budget "${PROBE_S:-60}")"
    stage probe "$PROBE_BUDGET" "$PYTHON" -m benchmarks.gpu_check probe --out "$OUT" \
        "${DRY[@]}" --budget "$PROBE_BUDGET"
    status=$?
    if [ $status -ne 0 ]; then
        echo "!! the probe failed (exit $status): CuPy cannot launch a kernel here; stopping"
        "$PYTHON" -m benchmarks.gpu_check summary --out "$OUT"
        exit 2
    fi
fi

if wanted targets; then
    TARGETS_BUDGET="$(budget "${TARGETS_S:-200}")"
    stage targets "$TARGETS_BUDGET" "$PYTHON" -m benchmarks.gpu_check targets --out "$OUT" \
        "${DRY[@]}" --budget "$(( TARGETS_BUDGET - 10 ))" \
        --case-budget "${CASE_BUDGET_S:-0.5}"
fi

if wanted determinism; then
    DETERMINISM_BUDGET="$(budget "${DETERMINISM_S:-30}")"
    stage determinism "$DETERMINISM_BUDGET" "$PYTHON" -m benchmarks.gpu_check determinism \
        --out "$OUT" "${DRY[@]}" --budget "$(( DETERMINISM_BUDGET - 5 ))"
fi

if wanted tests; then
    if [ "$DRY_RUN" = 1 ]; then  # the bridge's own tests, on the stand-in device
        TEST_ARGS=(tests/test_torch_cuda.py -k "round_trips or zero_copy")
    else
        TEST_ARGS=(-m "not nvrtc and not hostcuda" -n "${TEST_WORKERS:-4}"
                   tests/test_cupy_gpu.py tests/test_torch_cuda.py tests/test_parity.py)
    fi
    ARRAYLOSS_BACKENDS="${ARRAYLOSS_BACKENDS:-cupy,torch}" stage tests "$(budget "${TESTS_S:-120}")" \
        "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" \
        "${TEST_ARGS[@]}"
fi

if wanted elementwise; then
    ELEMENTWISE_DIR="$(mktemp -d)"  # elementwise.md comes back, its .json stays behind
    if [ "$DRY_RUN" = 1 ]; then
        ELEMENTWISE_ARGS=(--device cpu --rows 8 --budget 0.05 --max-rounds 3)
    else
        ELEMENTWISE_ARGS=(--device gpu --rows 16384 --budget 1 --max-rounds 100)
    fi
    stage elementwise "$(budget "${ELEMENTWISE_S:-30}")" "$PYTHON" -m benchmarks.elementwise \
        "${ELEMENTWISE_ARGS[@]}" --out "$ELEMENTWISE_DIR"
    [ -f "$ELEMENTWISE_DIR/elementwise.md" ] && cp "$ELEMENTWISE_DIR/elementwise.md" "$OUT/"
fi

if wanted sweep; then
    SWEEP_DIR="$(mktemp -d)"  # results.md and .json come back; the PNGs stay behind
    if [ "$DRY_RUN" = 1 ]; then
        SWEEP_ARGS=(--device cpu --quick --max-elements 4096 --budget 0.01 --max-repeats 3
                    --warmup 1)
    else
        SWEEP_ARGS=(--device gpu --budget "${BUDGET:-0.1}")
    fi
    SWEEP_BUDGET="$(budget "${SWEEP_S:-60}")"
    stage sweep "$SWEEP_BUDGET" "$PYTHON" -m benchmarks --no-progress \
        --time-limit "$(( SWEEP_BUDGET > 30 ? SWEEP_BUDGET - 20 : 10 ))" "${SWEEP_ARGS[@]}" \
        --out "$SWEEP_DIR"
    [ -f "$SWEEP_DIR/results.json" ] && cp "$SWEEP_DIR/results.json" "$OUT/sweep.json"
    [ -f "$SWEEP_DIR/results.md" ] && cp "$SWEEP_DIR/results.md" "$OUT/sweep.md"
fi

echo "== total $((SECONDS - STARTED))s"
if wanted summary; then
    stage summary "$(budget "${SUMMARY_S:-15}" 0)" "$PYTHON" -m benchmarks.gpu_check summary \
        --out "$OUT"
    exit $?
fi
