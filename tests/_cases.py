"""The parity cases and the PyTorch oracle that answers them.

Every case is plain data (float64 NumPy inputs, options, the dtype to run in), built from a
fixed seed, so ``reference/make_reference.py`` can store PyTorch's answers once and the tests can
check them on machines without PyTorch.  The cases follow PyTorch's own tests (OpInfo, ModuleInfo,
``common_nn`` and ``test_nn``; section 6 of the reference) and add what arrayloss extends.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REDUCTIONS = ("none", "mean", "sum")


@dataclass
class Case:
    """One call of a loss, forward and backward."""

    name: str
    loss: str  # "gaussian", "nll" or "cross_entropy"
    dtype: str  # the dtype the inputs are cast to
    reduction: str
    arrays: dict[str, np.ndarray]  # float64 values (targets: int64) before the cast
    options: dict[str, Any] = field(default_factory=dict)
    var_scalar: float | int | None = None  # a scalar var instead of arrays["var"]
    target_dtype: str = "int64"  # index target dtype for arrayloss (PyTorch gets int64)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _gen_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """OpInfo's gen_shape: the shape, its last dim set to 1, and the shape without it."""
    return [shape, (*shape[:-1], 1), shape[:-1]]


def gaussian_cases() -> list[Case]:
    cases = []
    # E. OpInfo nn.functional.gaussian_nll_loss: every target/var shape variant.
    kwargs_variants = [{}, {"full": True}, {"eps": "random"}, {"full": True, "eps": "random"}]
    for shape, target_shape, var_shape, reduction, kwargs_index in itertools.product(
        [(5,), (5, 5), (5, 5, 5)], range(3), range(3), REDUCTIONS, range(4)
    ):
        t_shape = _gen_shapes(shape)[target_shape]
        v_shape = _gen_shapes(shape)[var_shape]
        name = f"opinfo-{shape}-t{t_shape}-v{v_shape}-{reduction}-k{kwargs_index}"
        rng = _rng(name)
        options = dict(kwargs_variants[kwargs_index])
        if options.get("eps") == "random":
            options["eps"] = float(rng.uniform(1e-6, 1e-3))
        arrays = {
            "input": rng.uniform(-9, 9, shape),
            "target": rng.uniform(-9, 9, t_shape),
            "var": rng.uniform(0.1, 9, v_shape),
        }
        cases.append(Case(name, "gaussian", "float64", reduction, arrays, options))

    # F. ModuleInfo GaussianNLLLoss, incl. "homoscedastic" var (1, 3); G. broadcasting test.
    for reduction in REDUCTIONS:
        for var_shape in [(4, 1), (1, 3), (4, 3)]:
            name = f"module-var{var_shape}-{reduction}"
            rng = _rng(name)
            arrays = {"input": rng.normal(size=(4, 3)), "target": rng.normal(size=(4, 3)),
                      "var": np.abs(rng.normal(size=var_shape))}
            cases.append(Case(name, "gaussian", "float64", reduction, arrays))
    base_input = np.array([[0.5, 1.5, 2.5], [2.0, 4.0, 6.0]])
    for target, var in itertools.product(
        [np.array([[1.0, 2, 3], [1, 2, 3]]), np.array([[1.0, 2, 3]])],
        [np.array([[0.5, 0.5, 0.5], [1.5, 1.5, 1.5]]), np.array([[0.5], [1.5]]),
         np.array([0.5, 1.5])],
    ):
        for reduction in REDUCTIONS:
            name = f"broadcasting-t{target.shape}-v{var.shape}-{reduction}"
            cases.append(Case(name, "gaussian", "float64", reduction,
                              {"input": base_input, "target": target, "var": var}))

    # Target broadcasting with more dims than input; 'mean' divides by the broadcast numel.
    for reduction in REDUCTIONS:
        name = f"target-more-dims-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(3, 5)), "target": rng.normal(size=(2, 3, 5)),
                  "var": rng.uniform(0.2, 2, (3, 5))}
        cases.append(Case(name, "gaussian", "float64", reduction, arrays))

    # Scalar var: Python float, int, NumPy float32 (an improvement), var below eps, zero.
    for reduction, scalar in itertools.product(REDUCTIONS, [0.5, 2, np.float32(0.25), 0.0, 1e-9]):
        name = f"scalar-var-{scalar!r}-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(4, 3)), "target": rng.normal(size=(4, 3))}
        cases.append(Case(name, "gaussian", "float64", reduction, arrays, var_scalar=scalar))

    # Variances at and below eps (the clamp the gradients ignore), several size-1 dims.
    for reduction in REDUCTIONS:
        name = f"var-below-eps-{reduction}"
        rng = _rng(name)
        var = rng.uniform(0, 2e-6, (6, 4))
        var[0, 0] = 0.0
        arrays = {"input": rng.normal(size=(6, 4)), "target": rng.normal(size=(6, 4)), "var": var}
        cases.append(Case(name, "gaussian", "float64", reduction, arrays, {"eps": 1e-6}))
        name = f"var-several-ones-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(2, 3, 4)), "target": rng.normal(size=(2, 3, 4)),
                  "var": rng.uniform(0.2, 2, (1, 3, 1))}
        cases.append(Case(name, "gaussian", "float64", reduction, arrays, {"full": True}))

    # Empty inputs.
    for reduction, shape in itertools.product(REDUCTIONS, [(0,), (0, 3), (2, 0)]):
        name = f"empty-{shape}-{reduction}"
        arrays = {"input": np.zeros(shape), "target": np.zeros(shape), "var": np.ones(shape)}
        cases.append(Case(name, "gaussian", "float64", reduction, arrays))

    # Lower precisions (compared with tolerances for arrayloss's float32 arithmetic).
    for dtype, reduction, var_shape in itertools.product(
        ["float32", "float16"], REDUCTIONS, [(8, 5), (8, 1), (8,)]
    ):
        name = f"dtype-{dtype}-v{var_shape}-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(8, 5)), "target": rng.normal(size=(8, 5)),
                  "var": rng.uniform(0.3, 3, var_shape)}
        cases.append(Case(name, "gaussian", dtype, reduction, arrays, {"full": True}))
    return cases


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _target_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])


def nll_cases() -> list[Case]:
    cases = []
    # A. OpInfo nn.functional.nll_loss.
    for shape, reduction, variant in itertools.product(
        [(2, 3), (3,), (2, 3, 2, 2)], REDUCTIONS,
        ["plain", "weight", "weight-pos", "weight-neg", "ignore1", "ignore1-weight", "all-ignored"],
    ):
        if variant == "all-ignored" and reduction == "mean":
            continue
        name = f"opinfo-{shape}-{variant}-{reduction}"
        rng = _rng(name)
        target = rng.integers(0, 3, _target_shape(shape))
        options: dict[str, Any] = {}
        arrays = {"input": rng.uniform(-9, 9, shape)}
        if variant.startswith("weight"):
            low, high = {"weight": (-9, 9), "weight-pos": (0, 9), "weight-neg": (-9, 0)}[variant]
            arrays["weight"] = rng.uniform(low, high, 3)
        if variant.startswith("ignore1"):
            options["ignore_index"] = 1
            if reduction == "mean" and np.all(target == 1):
                target = np.zeros_like(target)
            if variant.endswith("weight"):
                arrays["weight"] = rng.uniform(-9, 9, 3)
        if variant == "all-ignored":
            target = np.zeros_like(target)
            options["ignore_index"] = 0
        arrays["target"] = target
        cases.append(Case(name, "nll", "float64", reduction, arrays, options))
    for reduction in REDUCTIONS:
        name = f"opinfo-negative-ignore-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.uniform(-9, 9, (2, 3)), "target": np.array([-1, 2])}
        cases.append(Case(name, "nll", "float64", reduction, arrays, {"ignore_index": -1}))

    # B. ModuleInfo NLLLoss: log_softmax inputs, several shapes and constructor cases.
    module_variants: list[tuple[str, dict[str, Any], bool]] = [
        ("plain", {}, False), ("ignore2", {"ignore_index": 2}, False),
        ("weight", {}, True), ("weight-ignore2", {"ignore_index": 2}, True),
        ("weight-ignore-neg", {"ignore_index": -1}, True),
    ]
    for shape, (variant, options, weighted), reduction in itertools.product(
        [(15, 4), (2, 4, 5, 5), (2, 4, 5, 5, 2, 2), (2, 4, 5)], module_variants, REDUCTIONS
    ):
        name = f"module-{shape}-{variant}-{reduction}"
        rng = _rng(name)
        arrays = {"input": _log_softmax(rng.uniform(-9, 9, shape), axis=1),
                  "target": np.floor(rng.uniform(size=_target_shape(shape)) * 4).astype(np.int64)}
        if weighted:
            arrays["weight"] = np.abs(rng.uniform(size=4))
        cases.append(Case(name, "nll", "float64", reduction, arrays, dict(options)))

    # C. common_nn no_reduce cases (C=10, 2-D and N-D) and the unbatched case.
    for shape, variant in itertools.product(
        [(15, 10), (2, 3, 5, 5), (2, 3, 5, 5, 2, 2)], ["plain", "ignore2", "weight"]
    ):
        name = f"no-reduce-{shape}-{variant}"
        rng = _rng(name)
        arrays = {"input": np.log(rng.uniform(size=shape) + 1e-2),
                  "target": rng.integers(0, shape[1], _target_shape(shape))}
        options = {"ignore_index": 2} if variant == "ignore2" else {}
        if variant == "weight":
            arrays["weight"] = rng.uniform(size=shape[1])
        cases.append(Case(name, "nll", "float64", "none", arrays, options))
    for reduction, (variant, target, options) in itertools.product(
        REDUCTIONS, [("t1", np.array(1), {}), ("t1-shape1", np.array([1]), {}),
                     ("ignored", np.array(1), {"ignore_index": 1})]
    ):
        name = f"unbatched-{variant}-{reduction}"
        rng = _rng(name)
        arrays = {"input": _log_softmax(rng.normal(size=3), axis=0), "target": target,
                  "weight": rng.uniform(0.5, 2, 3)}
        cases.append(Case(name, "nll", "float64", reduction, arrays, dict(options)))

    # D. test_nn: ignore_index outside [0, C), empty inputs, zero total weight, all ignored.
    for reduction in REDUCTIONS:
        name = f"ignore-255-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(6, 3)), "target": np.array([0, 1, 255, 0, 1, 2])}
        cases.append(Case(name, "nll", "float64", reduction, arrays, {"ignore_index": 255}))
        for shape in [(0, 3), (0, 3, 5, 7), (2, 3, 0, 7), (2, 3, 5, 0), (2, 3, 5, 7, 0)]:
            name = f"empty-{shape}-{reduction}"
            arrays = {"input": np.zeros(shape), "target": np.zeros(_target_shape(shape), np.int64)}
            cases.append(Case(name, "nll", "float64", reduction, arrays))
        for shape in [(2, 3), (2, 3, 5, 7), (2, 3, 5, 7, 9)]:
            zeros = np.zeros(_target_shape(shape), np.int64)
            cases.append(Case(f"zero-weight-{shape}-{reduction}", "nll", "float64", reduction,
                              {"input": np.ones(shape), "target": zeros,
                               "weight": np.zeros(3)}))
            cases.append(Case(f"all-ignored-{shape}-{reduction}", "nll", "float64", reduction,
                              {"input": np.ones(shape), "target": zeros}, {"ignore_index": 0}))
        # NaN and inf in ignored rows and in non-target columns must not leak.
        name = f"nonfinite-ignored-{reduction}"
        rng = _rng(name)
        x = rng.normal(size=(4, 3))
        x[1, :] = np.nan
        x[2, 0] = np.inf
        arrays = {"input": x, "target": np.array([0, -100, 1, 2])}
        cases.append(Case(name, "nll", "float64", reduction, arrays))

    # Every integer target dtype (an improvement: PyTorch takes int64 and uint8).
    for target_dtype, reduction in itertools.product(
        ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"], REDUCTIONS
    ):
        name = f"target-{target_dtype}-{reduction}"
        rng = _rng(name)
        arrays = {"input": _log_softmax(rng.normal(size=(10, 4)), axis=1),
                  "target": rng.integers(0, 4, 10), "weight": rng.uniform(0.5, 2, 4)}
        if target_dtype.startswith("u"):
            arrays["target"][::3] = 255
            options = {"ignore_index": 255}
        else:
            arrays["target"][::3] = -1
            options = {"ignore_index": -1}
        cases.append(Case(name, "nll", "float64", reduction, arrays, options, None, target_dtype))

    # Lower precisions.
    for dtype, reduction, shape in itertools.product(
        ["float32", "float16"], REDUCTIONS, [(16, 5), (2, 5, 3, 3)]
    ):
        name = f"dtype-{dtype}-{shape}-{reduction}"
        rng = _rng(name)
        target = rng.integers(0, 5, _target_shape(shape))
        arrays = {"input": _log_softmax(rng.normal(size=shape), axis=1), "target": target,
                  "weight": rng.uniform(0.5, 2, 5)}
        cases.append(Case(name, "nll", dtype, reduction, arrays, {"ignore_index": 3}))
    return cases


def _probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    values = rng.uniform(size=shape)
    return values / values.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)


def cross_entropy_cases() -> list[Case]:
    cases = []
    # Index targets: every option alone and together, over the layouts of NLL.
    index_variants: list[tuple[str, dict[str, Any], bool]] = [
        ("plain", {}, False), ("weight", {}, True), ("ignore1", {"ignore_index": 1}, False),
        ("smooth", {"label_smoothing": 0.1}, False),
        ("weight-smooth", {"label_smoothing": 0.3}, True),
        ("weight-ignore-smooth", {"ignore_index": 1, "label_smoothing": 0.25}, True),
        ("ignore-neg-smooth", {"ignore_index": -1, "label_smoothing": 1.0}, False),
    ]
    for shape, (variant, options, weighted), reduction in itertools.product(
        [(6, 5), (5,), (3, 5, 4), (2, 5, 3, 2)], index_variants, REDUCTIONS
    ):
        name = f"index-{shape}-{variant}-{reduction}"
        rng = _rng(name)
        target = rng.integers(0, 5, _target_shape(shape))
        ignore = options.get("ignore_index")
        if ignore is not None and target.ndim:
            target.flat[::3] = ignore
        arrays = {"input": rng.normal(scale=3, size=shape), "target": target}
        if weighted:
            arrays["weight"] = rng.uniform(0.2, 2, 5)
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays, dict(options)))

    # Probability targets (PyTorch's 'mean' divides by the number of samples, unweighted).
    prob_variants: list[tuple[str, dict[str, Any], bool]] = [
        ("plain", {}, False), ("weight", {}, True), ("smooth", {"label_smoothing": 0.2}, False),
        ("weight-smooth", {"label_smoothing": 0.4}, True),
    ]
    for shape, (variant, options, weighted), reduction in itertools.product(
        [(6, 5), (5,), (3, 5, 4)], prob_variants, REDUCTIONS
    ):
        name = f"probs-{shape}-{variant}-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(scale=3, size=shape), "target": _probabilities(rng, shape)}
        if weighted:
            arrays["weight"] = rng.uniform(0.2, 2, 5)
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays, dict(options)))

    for reduction in REDUCTIONS:
        # Large logits (the log-sum-exp must shift by the row max), a masked-out class (-inf),
        # soft targets that are not distributions, all targets ignored, empty inputs.
        name = f"large-logits-{reduction}"
        rng = _rng(name)
        x = rng.normal(scale=1e4, size=(8, 6))
        x[:, 3] = -np.inf
        arrays = {"input": x, "target": np.array([0, 1, 2, 4, 5, 0, 1, 2])}
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays))
        name = f"probs-unnormalised-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(4, 3)), "target": rng.uniform(-1, 2, (4, 3))}
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays,
                          {"label_smoothing": 0.1}))
        name = f"all-ignored-{reduction}"
        arrays = {"input": np.ones((3, 4)), "target": np.full(3, -100)}
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays,
                          {"label_smoothing": 0.2}))
        for shape in [(0, 4), (0, 4, 3), (2, 4, 0)]:
            arrays = {"input": np.zeros(shape), "target": np.zeros(_target_shape(shape), np.int64)}
            cases.append(Case(f"empty-{shape}-{reduction}", "cross_entropy", "float64",
                              reduction, arrays))
            arrays = {"input": np.zeros(shape), "target": np.zeros(shape)}
            cases.append(Case(f"empty-probs-{shape}-{reduction}", "cross_entropy", "float64",
                              reduction, arrays))

    # Narrow target dtypes, and lower precisions (computed in float32, rounded once).
    for target_dtype, reduction in itertools.product(["uint8", "int32"], REDUCTIONS):
        name = f"target-{target_dtype}-{reduction}"
        rng = _rng(name)
        arrays = {"input": rng.normal(size=(10, 4)), "target": rng.integers(0, 4, 10)}
        cases.append(Case(name, "cross_entropy", "float64", reduction, arrays,
                          {"ignore_index": 3}, None, target_dtype))
    for dtype, reduction, kind in itertools.product(
        ["float32", "float16"], REDUCTIONS, ["index", "probs"]
    ):
        name = f"dtype-{dtype}-{kind}-{reduction}"
        rng = _rng(name)
        shape = (16, 7)
        target = (rng.integers(0, 7, 16) if kind == "index" else _probabilities(rng, shape))
        arrays = {"input": rng.normal(scale=2, size=shape), "target": target,
                  "weight": rng.uniform(0.5, 2, 7)}
        cases.append(Case(name, "cross_entropy", dtype, reduction, arrays,
                          {"label_smoothing": 0.1}))
    return cases


def all_cases() -> list[Case]:
    cases = []
    for loss, group in (("gaussian", gaussian_cases()), ("nll", nll_cases()),
                        ("cross_entropy", cross_entropy_cases())):
        for case in group:
            case.name = f"{loss}-{case.name}"
            cases.append(case)
    assert len({case.name for case in cases}) == len(cases), "case names must be unique"
    return cases


def stratum(case: Case) -> tuple[Any, ...]:
    """What makes a case's code path: its loss, reduction, dtypes, which options it sets (and
    of which type), a scalar var or not, and its arrays' ranks.  Cases that share a stratum
    differ only in values (PyTorch's ``k0``..``k3`` draws of one shape, say)."""
    options = tuple(sorted((key, type(value).__name__) for key, value in case.options.items()))
    ranks = tuple(sorted((key, value.ndim) for key, value in case.arrays.items()))
    return (case.loss, case.reduction, case.dtype, case.target_dtype, options,
            case.var_scalar is not None, ranks)


def one_per_stratum(cases: list[Case]) -> list[Case]:
    """The first case of each :func:`stratum`: every code path, once.

    For the backends whose every new shape and dtype compiles again (JAX compiles each
    operation for each new shape): they run the generic code every other backend runs on
    every case, so each path once is what only they can add.
    """
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for case in cases:
        key = stratum(case)
        if key not in seen:
            seen.add(key)
            kept.append(case)
    return kept


def grad_output(case: Case, loss_shape: tuple[int, ...]) -> np.ndarray:
    """The upstream gradient used for a case's backward pass (float64)."""
    rng = np.random.default_rng(case.seed + 1)
    return rng.uniform(0.5, 1.5, loss_shape)


def cast_inputs(case: Case) -> dict[str, np.ndarray]:
    """The case's arrays in the dtypes arrayloss receives them."""
    cast = {}
    for key, value in case.arrays.items():
        if key == "target" and np.issubdtype(value.dtype, np.integer):
            cast[key] = value.astype(case.target_dtype)
        else:
            cast[key] = value.astype(case.dtype)
    return cast


def torch_oracle(case: Case) -> dict[str, np.ndarray]:
    """PyTorch's loss and gradients for ``case`` (needs torch), as float64 NumPy arrays.

    Low precisions are evaluated in float64 on the rounded inputs: arrayloss computes 16-bit
    inputs in float32 and rounds once, so that is the value it must approach.
    """
    import torch
    import torch.nn.functional as F

    inputs = cast_inputs(case)
    compute = torch.float32 if case.dtype == "float32" else torch.float64

    def tensor(key: str, grad: bool) -> torch.Tensor:
        value = torch.from_numpy(inputs[key].astype(np.float64)).to(compute)
        return value.requires_grad_(grad)

    result: dict[str, np.ndarray] = {}
    if case.loss == "gaussian":
        x, t = tensor("input", True), tensor("target", True)
        leaves = {"input": x, "target": t}
        if case.var_scalar is not None:
            var: Any = float(case.var_scalar)
        else:
            var_leaf = tensor("var", True)
            leaves["var"] = var_leaf
            var = var_leaf
            if var_leaf.ndim == x.ndim and var_leaf.shape != x.shape:
                var = var_leaf.expand(x.shape)  # several size-1 dims: arrayloss's extension
        loss = F.gaussian_nll_loss(x, t, var, reduction=case.reduction, **case.options)
    elif case.loss == "cross_entropy" and not np.issubdtype(case.arrays["target"].dtype,
                                                             np.integer):
        x, q = tensor("input", True), tensor("target", True)
        leaves = {"input": x, "target": q}
        weight = tensor("weight", False) if "weight" in case.arrays else None
        loss = F.cross_entropy(x, q, weight, reduction=case.reduction, **case.options)
    else:
        x = tensor("input", True)
        leaves = {"input": x}
        target = torch.from_numpy(case.arrays["target"].astype(np.int64))
        if x.ndim == 1:
            # PyTorch 2.13 accepts a (1,) target for (C,) input forward but its backward
            # fails ("size mismatch"); the () target means the same.
            target = target.reshape(())
        weight = tensor("weight", False) if "weight" in case.arrays else None
        function = F.nll_loss if case.loss == "nll" else F.cross_entropy
        loss = function(x, target, weight, reduction=case.reduction, **case.options)
    result["loss"] = loss.detach().to(torch.float64).numpy()
    upstream = torch.from_numpy(grad_output(case, tuple(loss.shape))).to(loss.dtype)
    if loss.requires_grad:
        loss.backward(upstream)
    for key, leaf in leaves.items():
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        result[f"grad_{key}"] = grad.to(torch.float64).numpy()
    return result
