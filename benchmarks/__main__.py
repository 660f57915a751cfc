"""``python -m benchmarks``: arrayloss against PyTorch and the copy roofline.

``python -m benchmarks --help`` lists the options (plain text: :data:`DESCRIPTION`);
``benchmarks/README.md`` explains the method.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .cases import OPERATIONS, REDUCTIONS, Case, build_cases, make_inputs, model_bytes
from .providers import COPY, PROVIDERS, VIA_TORCH_CPU, Provider, convert, make_call, supports
from .timing import lane_peak, numpy_peak, time_cpu_interleaved, time_gpu, torch_cpu_peak

ROOT = Path(__file__).resolve().parent


def _gpu_available() -> bool:
    return COPY.available()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("arrayloss", "array_api_compat", "cupy", "torch"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return versions


def _device_description(device: str) -> dict[str, Any]:
    if device == "gpu":
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = properties["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return {"device_name": name,
                "driver": cupy.cuda.runtime.driverGetVersion(),
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "memory_bytes": int(properties["totalGlobalMem"]),
                "l2_bytes": int(properties.get("l2CacheSize", 0))}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"device_name": f"{cpu} ({os.cpu_count()} cores)"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def cpu_record(save: bool) -> tuple[str, Path]:
    """This CPU's name, and the folder a CPU command writes its record to: the committed
    ``results/<cpu>/`` with ``--save``, else the git-ignored ``results/_scratch/<cpu>/``."""
    name = _device_description("cpu")["device_name"]
    slug = _slug(f"cpu-{name}")
    return name, ROOT / "results" / (slug if save else f"_scratch/{slug}")


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy GB/s (bytes read + written) of a ``nbytes`` buffer."""
    import cupy

    source = cupy.empty(nbytes // 2, dtype=cupy.uint8)
    destination = cupy.empty_like(source)
    timing = time_gpu([lambda: destination.__setitem__(Ellipsis, source)], "cupy", 3, 1.0, 50)
    return nbytes / timing.median_s / 1e9


def _input_sets(case: Case, device: str) -> int:
    """Input sets to cycle through on a GPU, so repeated calls do not run from L2."""
    if device == "cpu":
        return 1
    return int(min(4, max(1, -(-256e6 // max(model_bytes(case), 1)))))


def run(args: argparse.Namespace) -> Path:
    device = args.device
    if device == "auto":
        device = "gpu" if _gpu_available() else "cpu"
    if device == "gpu" and not _gpu_available():
        raise SystemExit("no working CUDA device for --device gpu")
    providers: list[Provider] = [p for p in PROVIDERS[device]
                                 if p.name in args.providers or not args.providers]
    providers = [p for p in providers if p.available()]
    dtypes = args.dtypes or (["float32"] if args.quick or device == "cpu" else
                             ["float32", "float16", "bfloat16", "float64"])
    cases = build_cases(device, args.losses, args.ops, args.reductions, dtypes, args.quick)
    cases = [case for case in cases if case.elements <= args.max_elements]

    meta: dict[str, Any] = {
        "device_kind": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "versions": ", ".join(f"{k} {v}" for k, v in _versions().items()),
        "providers": [p.name for p in providers],
        **_device_description(device),
    }
    if device == "gpu":
        meta["copy_gbps"] = measure_copy_bandwidth()
    slug = _slug(f"{device}-{meta['device_name']}")
    if args.out:
        out = Path(args.out)
    elif args.save:
        out = ROOT / "results" / slug  # the committed record of this device
    else:
        out = ROOT / "results" / "_scratch" / slug  # git-ignored: nothing committed changes

    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is a nicety
        def tqdm(iterable: Any, **_: Any) -> Any:
            return iterable

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    skipped = 0
    interrupted = False
    for case in tqdm(cases, desc=f"benchmarks ({device})", unit="case", disable=args.no_progress):
        if interrupted or time.perf_counter() - started > args.time_limit:
            skipped += 1
            continue
        try:
            rows += _measure_case(case, device, providers, args)
        except KeyboardInterrupt:  # `timeout -s INT`: write what was measured
            interrupted = True
            skipped += 1
    meta["cases_run"] = len(cases) - skipped
    meta["cases_skipped_for_time"] = skipped
    meta["interrupted"] = interrupted
    files = report.write(out, meta, rows)
    print(f"wrote {', '.join(str(path) for path in files.values())}")
    sections = (out / "results.md").read_text().split("\n## ")
    print("## " + next(section for section in sections if section.startswith("Targets")))
    return out


def _measure_case(case: Case, device: str, providers: list[Provider],
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of every provider of one case."""
    rows: list[dict[str, Any]] = []
    # Large GPU inputs are made on the device, in seconds rather than minutes.
    generator: Any = importlib.import_module("cupy") if device == "gpu" else np
    inputs = [make_inputs(case, seed, generator)
              for seed in range(_input_sets(case, device))]
    if device == "cpu":
        return _measure_cpu_case(case, providers, inputs, args)
    for provider in providers:
        if not supports(provider, case):
            continue
        try:
            calls = [make_call(provider, case, convert(provider, case, arrays))
                     for arrays in inputs]
            timing = time_gpu(calls, provider.library, args.warmup, args.budget,
                              args.max_repeats)
        except Exception as error:  # a provider that cannot run a case is reported
            rows.append(_error_row(case, provider, error))
            continue
        finally:
            _free_gpu_memory(provider)
        rows.append({"case_key": case.key, "case": case.to_dict(), "provider": provider.name,
                     "model_bytes": model_bytes(case), **timing.to_dict()})
    return rows


def _error_row(case: Any, provider: Provider, error: Exception) -> dict[str, Any]:
    """A provider that cannot run a case is reported, not dropped."""
    return {"case_key": case.key, "case": case.to_dict(), "provider": provider.name,
            "error": repr(error)[:300], "model_bytes": model_bytes(case),
            "median_s": float("nan")}


def _measure_cpu_case(case: Any, providers: list[Provider], inputs: list[dict[str, Any]],
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every provider of one CPU case, interleaved round by round (see ``timing``)."""
    rows, calls, peaks = [], {}, {}
    for provider in providers:
        if not supports(provider, case):
            continue
        try:
            calls[provider.name] = [make_call(provider, case, convert(provider, case, arrays))
                                    for arrays in inputs]
        except Exception as error:
            rows.append(_error_row(case, provider, error))
            continue
        peaks[provider.name] = (numpy_peak if provider.library == "numpy" else lane_peak
                                if provider is VIA_TORCH_CPU else torch_cpu_peak)
    if not calls:
        return rows
    # Each provider gets the budget, as when they were timed one after another.
    timings = time_cpu_interleaved(calls, peaks, args.warmup, args.budget * len(calls),
                                   args.max_repeats)
    for name, timing in timings.items():
        rows.append({"case_key": case.key, "case": case.to_dict(), "provider": name,
                     "model_bytes": model_bytes(case), **timing.to_dict()})
    return rows


def _free_gpu_memory(provider: Provider) -> None:
    if provider.library == "torch":
        import torch

        torch.cuda.empty_cache()
    else:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()


def _at_least(minimum: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = _at_least(0.0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return float(value)


DESCRIPTION = """\
Time arrayloss against PyTorch and against the copy roofline, on the CPU or a CUDA GPU.

Results go to benchmarks/results/_scratch/<device>/ (git-ignored), to the committed record
benchmarks/results/<device>/ with --save (after a complete run), or to --out: results.json,
results.md (the targets and every case) and one PNG per loss.  benchmarks/README.md explains
the method.
"""

EXAMPLES = """\
examples:
  python -m benchmarks --quick                   CPU or GPU, under a minute
  python -m benchmarks --device gpu              the full GPU sweep
  python -m benchmarks --losses nll --ops backward --dtypes float32 float16
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    provider_names = sorted({p.name for providers in PROVIDERS.values() for p in providers})
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION,
                                     epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="where to run (default: auto, the GPU if CuPy has a working "
                             "one, else the CPU)")
    # linear_cross_entropy (issue 30's head, tens of seconds per CPU case) runs when asked for.
    parser.add_argument("--losses", nargs="+",
                        choices=["gaussian_nll", "nll", "cross_entropy", "linear_cross_entropy"],
                        default=["gaussian_nll", "nll", "cross_entropy"], metavar="LOSS",
                        help="losses to time: gaussian_nll, nll, cross_entropy, "
                             "linear_cross_entropy (default: all but linear_cross_entropy)")
    parser.add_argument("--ops", nargs="+", choices=OPERATIONS, default=list(OPERATIONS),
                        metavar="OP",
                        help=f"operations to time: {', '.join(OPERATIONS)} (default: all)")
    parser.add_argument("--reductions", nargs="+", choices=REDUCTIONS, default=list(REDUCTIONS),
                        metavar="REDUCTION",
                        help=f"reductions to time: {', '.join(REDUCTIONS)} (default: all)")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE",
                        choices=["float16", "bfloat16", "float32", "float64"],
                        help="float16, bfloat16, float32, float64 (default: float32 on the "
                             "CPU and with --quick, all four on a GPU)")
    parser.add_argument("--providers", nargs="+", default=[], choices=provider_names,
                        metavar="PROVIDER",
                        help="providers to keep: "
                             + ", ".join(repr(name) for name in provider_names)
                             + " (default: every one available)")
    parser.add_argument("--quick", action="store_true",
                        help="a few sizes, float32 only: under a minute (default: the full "
                             "sweep)")
    parser.add_argument("--max-elements", type=_at_least(1), default=1 << 30, metavar="N",
                        help="skip the cases with more input elements than N "
                             "(default: %(default)s, 2^30)")
    parser.add_argument("--budget", type=_positive_float, default=0.3, metavar="SECONDS",
                        help="seconds of timing per provider and case (default: %(default)s)")
    parser.add_argument("--max-repeats", type=_at_least(1), default=200, metavar="N",
                        help="the most timed calls (GPU) or rounds (CPU) per case "
                             "(default: %(default)s)")
    parser.add_argument("--warmup", type=_at_least(0), default=3, metavar="N",
                        help="untimed calls before a provider's timing (default: %(default)s)")
    parser.add_argument("--time-limit", type=_positive_float, default=float("inf"),
                        metavar="SECONDS",
                        help="start no new case after this many seconds (default: no limit)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--save", action="store_true",
                       help="write the committed record benchmarks/results/<device>/ "
                            "(default: the git-ignored benchmarks/results/_scratch/<device>/)")
    where.add_argument("--out", metavar="FOLDER",
                       help="write the results to FOLDER (default: see --save)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a progress bar on stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
