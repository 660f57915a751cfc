"""The GPU's ceilings: copy bandwidth and the launch overhead of each kind of kernel.

``python -m benchmarks.ceilings OUT.json`` measures the device-to-device copy bandwidth
(bytes read + written) and the per-call cost of an empty CuPy ElementwiseKernel,
ReductionKernel and RawKernel against a one-op PyTorch call, at 1 and 1000 elements, with
``cupyx.profiler.benchmark`` (CPU time and GPU time per call).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def measure() -> dict[str, Any]:
    import cupy
    from cupyx.profiler import benchmark

    from .__main__ import measure_copy_bandwidth

    results: dict[str, Any] = {
        "copy_gbps_1GiB": measure_copy_bandwidth(1 << 30),
        "copy_gbps_256MiB": measure_copy_bandwidth(1 << 28),
    }
    elementwise = cupy.ElementwiseKernel("T x", "T y", "y = x", "arrayloss_empty_elementwise")
    reduction = cupy.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0",
                                     "arrayloss_empty_reduction")
    raw = cupy.RawKernel('extern "C" __global__ void arrayloss_empty_raw(float* x) {}',
                         "arrayloss_empty_raw")
    launches: dict[str, Any] = {}
    for size in (1, 1000):
        x = cupy.zeros(size, dtype=cupy.float32)
        y = cupy.empty_like(x)
        calls = {
            "ElementwiseKernel": lambda x=x, y=y: elementwise(x, y),
            "ReductionKernel": lambda x=x: reduction(x),
            "RawKernel": lambda x=x: raw((1,), (32,), (x,)),
        }
        try:
            import torch

            tensor = torch.zeros(size, device="cuda")
            calls["torch add_ (one op)"] = lambda tensor=tensor: tensor.add_(0)
        except Exception:
            pass
        for name, call in calls.items():
            result = benchmark(call, n_repeat=2000, n_warmup=50)
            launches[f"{name} n={size}"] = {
                "cpu_us": float(result.cpu_times.mean() * 1e6),
                "gpu_us": float(result.gpu_times.mean() * 1e6),
            }
    results["launch_overhead"] = launches
    return results


def main(argv: list[str]) -> int:
    results = measure()
    text = json.dumps(results, indent=1)
    if argv:
        with open(argv[0], "w") as stream:
            stream.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
