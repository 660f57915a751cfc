"""What is measured: the benchmark cases, their inputs, and the bytes each must move.

A case is one call shape (loss, operation, reduction, variant, dtype, size).  Its *model
bytes* are the least traffic any implementation needs: every input read once and every
output written once (a reduced loss writes nothing worth counting).  Achieved bandwidth is
model bytes over time, compared with a device-to-device copy of the same bytes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OPERATIONS = ("forward", "backward", "loss_and_grad")
#: The Gaussian NLL options beside the plain variance, each with one variance per row: the
#: log-variance form and beta-NLL (beta = 0.5).  Their target: within 1.1x of "rows".
GAUSSIAN_VARIANTS = ("log_var", "beta")
BETA = 0.5
REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Case:
    """One benchmarked call."""

    loss: str  # "gaussian_nll", "nll", "cross_entropy" or "linear_cross_entropy"
    op: str  # "forward", "backward" or "loss_and_grad"
    reduction: str
    variant: str  # gaussian: var "full" | "rows" | "scalar" | "log_var" | "beta" (both with
    # one variance per row); nll: "plain" | "weighted-ignored"; cross_entropy: "plain" |
    # "in-place" (loss_and_grad with out=input: the gradient over the logits);
    # linear_cross_entropy: "d<features>" (the hidden size d)
    dtype: str
    shape: tuple[int, ...]  # input shape; linear_cross_entropy: (N, V), the logits it avoids
    elements: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "elements", math.prod(self.shape))

    @property
    def key(self) -> str:
        return (f"{self.loss}/{self.op}/{self.reduction}/{self.variant}/{self.dtype}/"
                f"{'x'.join(map(str, self.shape))}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def itemsize(dtype: str) -> int:
    return 2 if dtype in ("float16", "bfloat16") else np.dtype(dtype).itemsize


def _target_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:])


def model_bytes(case: Case) -> int:
    """The least bytes a call must move (see the module docstring)."""
    size = itemsize(case.dtype)
    if case.loss == "gaussian_nll":
        n = case.elements
        var = case.shape[0] if case.variant in ("rows", "log_var", "beta") else {
            "full": n, "scalar": 0}[case.variant]
        inputs = (2 * n + var) * size
        if case.op == "forward":
            return inputs + (n * size if case.reduction == "none" else 0)
        upstream = n * size if (case.op == "backward" and case.reduction == "none") else 0
        grads = (n + var) * size  # grad_input and grad_var, as a training step asks
        return inputs + upstream + grads
    if case.loss == "linear_cross_entropy":
        # The tokens and the head read once, the int64 targets, both gradients written once.
        n, v = case.shape
        arrays = (n + v) * features(case) * size
        return arrays + n * 8 + (0 if case.op == "forward" else arrays)
    targets = math.prod(_target_shape(case.shape))
    if case.loss == "cross_entropy":
        # Every logit read once, the int64 targets, the gradient written once.
        logits = case.elements * size
        out = targets * size if case.reduction == "none" else 0
        return logits + targets * 8 + (out if case.op == "forward" else logits)
    read = targets * (8 + size)  # int64 target plus the gathered log-probability
    dense = case.elements * size  # the gradient, written once
    out = targets * size if case.reduction == "none" else 0
    if case.op == "forward":
        return read + out
    if case.op == "backward":
        return targets * 8 + dense + (targets * size if case.reduction == "none" else 0)
    return read + dense


#: The CPU sizes of issue 16's targets: GNLL at 100, 10,000 and 1e6 elements, NLL at the
#: classifier shapes and one segmentation shape (N*S = 131,072 gathered elements).
CPU_GAUSSIAN_SHAPES = [(1, 100), (10, 100), (100, 100), (1000, 100), (10000, 100), (65536, 64)]
CPU_NLL_SHAPES = [(32, 10), (1000, 10), (65536, 10), (1024, 1000), (10000, 1000),
                  (100000, 100), (8, 21, 128, 128)]
#: Where issue 16 judges the time above the bare NumPy expression (arrayloss's overhead):
#: NLL forward at 32x10 and 1000x10, GNLL forward at 100 and 10,000 elements.
OVERHEAD_SHAPES = {"nll": [(32, 10), (1000, 10)], "gaussian_nll": [(1, 100), (100, 100)]}


def features(case: Case) -> int:
    """The hidden size ``d`` of a linear cross-entropy case (its variant, ``"d1024"``)."""
    return int(case.variant.removeprefix("d"))


def output_bytes(case: Case) -> int:
    """Bytes of what a call returns: the loss for ``'none'``, the gradients of a backward or
    loss-and-gradient call (none for cross-entropy's in-place gradient).  Issue 16's memory
    target allows PyTorch's peak plus one output of this size."""
    size = itemsize(case.dtype)
    if case.op == "forward":
        if case.reduction != "none":
            return 0
        loss_elements = (case.elements if case.loss == "gaussian_nll"
                         else math.prod(_target_shape(case.shape)))
        return loss_elements * size
    if case.loss == "gaussian_nll":
        var = case.shape[0] if case.variant in ("rows", "log_var", "beta") else {
            "full": case.elements, "scalar": 0}[case.variant]
        return (case.elements + var) * size
    if case.loss == "linear_cross_entropy":
        return sum(case.shape) * features(case) * size  # grad_input and grad_W
    return 0 if case.variant == "in-place" else case.elements * size


def gaussian_shapes(device: str, quick: bool) -> list[tuple[int, ...]]:
    if device == "cpu":
        return [(1, 100), (100, 100)] if quick else CPU_GAUSSIAN_SHAPES
    sizes = ([1 << 10, 1 << 20, 1 << 24] if quick else [1 << e for e in range(8, 29, 2)])
    return [(max(n // 64, 1), min(n, 64)) for n in sizes]


def nll_shapes(device: str, quick: bool) -> list[tuple[int, ...]]:
    if device == "cpu":
        return [(32, 10), (1000, 10)] if quick else CPU_NLL_SHAPES
    if quick:
        return [(1024, 10), (1 << 20, 1000)]
    shapes = [(n, c) for n, c in itertools.product([1 << e for e in range(10, 23, 2)],
                                                   [10, 1000, 32768]) if n * c <= 1 << 30]
    return [*shapes, (16, 19, 128, 128), (8, 21, 256, 256)]


def cross_entropy_shapes(device: str, quick: bool) -> list[tuple[int, ...]]:
    """LLM vocabularies (32,000 and Llama 3's 128,256) and small C; 1e6 elements on the CPU."""
    if quick:
        return [(1024, 1000), (65536, 10)]
    if device == "cpu":
        return [(1000, 1000), (65536, 10), (4096, 32000)]
    return [(65536, 10), (4096, 32000), (8192, 128256)]


def linear_cross_entropy_shapes(device: str, quick: bool) -> list[tuple[int, int, int]]:
    """(N, V, d) of a language model's head: issue 30's CPU case (4096 tokens, d 1024, V
    32,000) and GPU case (8192 tokens, d 4096, Llama 3's 128,256: Liger's and CCE's size)."""
    if quick:
        return [(256, 4096, 64)]
    if device == "cpu":
        return [(4096, 32000, 1024)]
    return [(4096, 32000, 1024), (8192, 128256, 4096)]


def build_cases(device: str, losses: list[str], ops: list[str], reductions: list[str],
                dtypes: list[str], quick: bool) -> list[Case]:
    """Every case of a run, smallest first."""
    cases: list[Case] = []
    for loss, op, reduction, dtype in itertools.product(losses, ops, reductions, dtypes):
        if op == "loss_and_grad" and reduction == "none":
            continue
        if loss == "gaussian_nll":
            variants = (["full", "rows", "scalar", *GAUSSIAN_VARIANTS] if reduction == "mean"
                        else ["rows"])
            for variant, shape in itertools.product(variants, gaussian_shapes(device, quick)):
                cases.append(Case(loss, op, reduction, variant, dtype, shape))
        elif loss == "linear_cross_entropy":
            if reduction != "mean" or op == "backward":
                continue
            for n, v, d in linear_cross_entropy_shapes(device, quick):
                cases.append(Case(loss, op, reduction, f"d{d}", dtype, (n, v)))
        elif loss == "cross_entropy":
            if reduction != "mean":
                continue
            variants = ["plain", "in-place"] if op == "loss_and_grad" else ["plain"]
            for variant, shape in itertools.product(variants,
                                                    cross_entropy_shapes(device, quick)):
                cases.append(Case(loss, op, reduction, variant, dtype, shape))
        else:
            variants = ["plain", "weighted-ignored"] if reduction == "mean" else ["plain"]
            for variant, shape in itertools.product(variants, nll_shapes(device, quick)):
                cases.append(Case(loss, op, reduction, variant, dtype, shape))
    # The cases behind the targets first, so a time-limited run always measures them.
    return sorted(cases, key=lambda case: (not is_target_case(case, device), case.elements,
                                           case.key))


def is_overhead_case(case: Case) -> bool:
    """Whether ``case`` is one where issue 16 compares arrayloss with the bare NumPy
    expression (forward, mean, float32, plain variance or plain NLL)."""
    return (case.op == "forward" and case.reduction == "mean" and case.dtype == "float32"
            and case.variant in ("full", "plain")
            and case.shape in OVERHEAD_SHAPES.get(case.loss, []))


def is_target_case(case: Case, device: str = "gpu") -> bool:
    """Whether ``case`` is one the targets in ``report.evaluate_targets`` read."""
    if case.loss == "linear_cross_entropy":
        return case.op == "loss_and_grad"
    if case.dtype != "float32" or case.reduction != "mean":
        return False
    if device == "cpu":
        if case.loss == "gaussian_nll":
            return case.variant == "full" and case.op in ("forward", "loss_and_grad")
        return case.variant == "plain" and case.op in ("forward", "loss_and_grad")
    if case.loss == "gaussian_nll":
        return case.variant == "full" and case.shape in ((1 << 20, 64), (16, 64)) and (
            case.op in ("forward", "loss_and_grad"))
    if case.loss == "cross_entropy":
        return case.op in ("forward", "loss_and_grad")
    return case.variant == "plain" and (
        (case.op == "forward" and case.shape in ((1 << 20, 1000), (1024, 10)))
        or (case.op == "backward" and case.shape == (1 << 22, 10)))


def make_inputs(case: Case, seed: int = 0, xp: Any = np) -> dict[str, Any]:
    """Inputs in float32/float64 (16-bit dtypes are cast by each provider).

    ``xp`` is NumPy, or CuPy to generate large GPU inputs on the device.
    """
    rng = xp.random.default_rng(seed)
    storage = np.float64 if case.dtype == "float64" else np.float32
    if case.loss == "gaussian_nll":
        x = rng.standard_normal(case.shape, dtype=storage)
        t = rng.standard_normal(case.shape, dtype=storage)
        rows = (case.shape[0], 1)
        var: Any = {"full": lambda: rng.uniform(0.1, 2.0, case.shape).astype(storage),
                    "rows": lambda: rng.uniform(0.1, 2.0, rows).astype(storage),
                    "beta": lambda: rng.uniform(0.1, 2.0, rows).astype(storage),
                    "log_var": lambda: rng.uniform(-2.0, 0.7, rows).astype(storage),
                    "scalar": lambda: 0.75}[case.variant]()
        inputs = {"input": x, "target": t, "var": var}
        if case.reduction == "none":
            inputs["grad_output"] = rng.uniform(0.5, 1.5, case.shape).astype(storage)
        return inputs
    if case.loss == "linear_cross_entropy":
        n, v = case.shape
        d = features(case)
        # A trained head's scale: logits of a few units (0.02 is GPT-2's initialisation).
        return {"input": rng.standard_normal((n, d), dtype=storage),
                "linear_weight": rng.standard_normal((v, d), dtype=storage) * 0.02,
                "target": rng.integers(0, v, n, dtype=np.int64)}
    n_classes = case.shape[1]
    logits = rng.standard_normal(case.shape, dtype=storage)
    target = rng.integers(0, n_classes, _target_shape(case.shape), dtype=np.int64)
    inputs = {"input": logits, "target": target, "weight": None, "ignore_index": -100}
    if case.variant == "weighted-ignored":
        inputs["weight"] = rng.uniform(0.5, 2.0, n_classes).astype(storage)
        target.reshape(-1)[::7] = -100
    if case.reduction == "none":
        inputs["grad_output"] = rng.uniform(0.5, 1.5, _target_shape(case.shape)).astype(storage)
    return inputs
