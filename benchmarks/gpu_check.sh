#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with an NVIDIA GPU:
#   1. the test suite with the cupy backend (fused vs generic vs PyTorch, determinism, no sync),
#   2. the ceilings (copy bandwidth, launch overheads),
#   3. the GPU benchmark suite,
# then a short summary table, printed last.  Full results go under $OUT (default: a temp dir):
# versions.txt, tests.xml, ceilings.json, summary.txt and bench/ (results.json, results.md, PNGs).
#
# On the lent device machine (Python 3.12, CuPy, PyTorch, NumPy preinstalled) the missing
# array-api-compat and array-api-strict travel as wheels in .whl/ (see benchmarks/README.md).
# TIME_LIMIT (seconds, default 240) caps the benchmark sweep so the whole check fits in 10 min.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/bench"

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/arrayloss-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/arrayloss-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
        | sed 's/^/gpu: /'
    python3 - <<'PY'
import importlib
for name in ("numpy", "cupy", "torch", "array_api_compat", "array_api_strict", "arrayloss"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"{name}: missing ({error})")
import cupy
print("cuda runtime:", cupy.cuda.runtime.runtimeGetVersion(),
      "driver:", cupy.cuda.runtime.driverGetVersion())
PY
} | tee "$OUT/versions.txt"

echo "== 1. tests (cupy backend on the GPU; NVRTC-only compile checks and the CPU harness"
echo "   skipped: the GPU compiles and runs the kernels itself)"
ARRAYLOSS_BACKENDS="${ARRAYLOSS_BACKENDS:-numpy,array_api_strict,torch,cupy}" \
    timeout "${TEST_TIME_LIMIT:-300}" python3 -m pytest -q -p no:cacheprovider \
    -m "not nvrtc and not hostcuda" \
    --junitxml="$OUT/tests.xml" tests 2>&1 | tee /tmp/arrayloss-tests.log | tail -n 30

echo "== 2. ceilings"
timeout 120 python3 -m benchmarks.ceilings "$OUT/ceilings.json" > /dev/null

echo "== 3. benchmarks"
timeout $(( ${TIME_LIMIT:-240} + 60 )) python3 -m benchmarks --device gpu --no-progress \
    --time-limit "${TIME_LIMIT:-240}" --budget "${BUDGET:-0.15}" --out "$OUT/bench" \
    > /tmp/arrayloss-bench.log 2>&1 || tail -n 20 /tmp/arrayloss-bench.log

python3 -m benchmarks.summary "$OUT" | tee "$OUT/summary.txt"
