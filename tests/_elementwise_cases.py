"""The elementwise losses' case table, shared by the backend matrix, the PyTorch parity tests,
the CUDA kernels (host harness and GPU) and the fuzzer, so that they cannot drift apart.

A :class:`Variant` is one loss with one set of options; :func:`make_arrays` draws its
arguments (float64 NumPy values, each in the loss's domain) for a shape case.  PyTorch's
function of the same name is the oracle (:func:`torch_loss`).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import arrayloss as al

REDUCTIONS = ("none", "mean", "sum")
DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Variant:
    """One loss and one choice of its options."""

    loss: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Weights to pass: names of optional arguments ("weight", "pos_weight").
    weights: tuple[str, ...] = ()
    #: Whether target broadcasts against input (else it has the input's shape).
    broadcast_target: bool = True
    integer_target: bool = False
    extra_reductions: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        parts = [self.loss, *(f"{k}={v}" for k, v in self.options.items()), *self.weights]
        return "-".join(parts)

    @property
    def reductions(self) -> tuple[str, ...]:
        return (*REDUCTIONS, *self.extra_reductions)

    def function(self, suffix: str = "") -> Any:
        return getattr(al, self.loss + suffix)


VARIANTS = [
    Variant("mse_loss", integer_target=True),
    Variant("l1_loss", integer_target=True),
    Variant("smooth_l1_loss", integer_target=True),
    Variant("smooth_l1_loss", {"beta": 0.5}),
    Variant("smooth_l1_loss", {"beta": 0.0}),
    Variant("mse_loss", weights=("weight",)),
    Variant("l1_loss", weights=("weight",), integer_target=True),
    Variant("huber_loss", integer_target=True),
    Variant("huber_loss", {"delta": 0.3}),
    Variant("huber_loss", {"delta": 0.3}, weights=("weight",)),
    Variant("binary_cross_entropy", broadcast_target=False),
    Variant("binary_cross_entropy", weights=("weight",), broadcast_target=False),
    Variant("binary_cross_entropy_with_logits", broadcast_target=False),
    Variant("binary_cross_entropy_with_logits", weights=("weight", "pos_weight"),
            broadcast_target=False),
    Variant("binary_cross_entropy_with_logits", weights=("pos_weight",),
            broadcast_target=False),
    Variant("kl_div", extra_reductions=("batchmean",)),
    Variant("kl_div", {"log_target": True}, extra_reductions=("batchmean",)),
    Variant("poisson_nll_loss", integer_target=True),
    Variant("poisson_nll_loss", {"full": True}),
    Variant("poisson_nll_loss", {"log_input": False}),
    Variant("poisson_nll_loss", {"log_input": False, "full": True, "eps": 1e-3}),
]

#: (input shape, target shape) cases: 0-d, empty, plain, broadcast (target smaller, larger).
SHAPES = [((), ()), ((0,), (0,)), ((7,), (7,)), ((4, 5), (4, 5)), ((3, 4, 2), (3, 4, 2))]
BROADCAST_SHAPES = [((4, 5), (5,)), ((4, 1), (4, 5)), ((5,), (3, 5)), ((2, 1, 3), (4, 1))]


def spec(variant: Variant) -> Any:
    """The variant's loss's declaration."""
    from arrayloss.losses import SPECS

    return next(declared for declared in SPECS if declared.name == variant.loss)


def shapes_for(variant: Variant) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return SHAPES + (BROADCAST_SHAPES if variant.broadcast_target else [])


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def make_arrays(variant: Variant, input_shape: tuple[int, ...],
                target_shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """float64 arguments in the loss's domain (integer targets where the variant says)."""
    rng = _rng(variant.id, input_shape, target_shape, seed)
    loss = variant.loss
    if loss == "binary_cross_entropy":
        x = rng.uniform(0.02, 0.98, input_shape)
        t = rng.uniform(0, 1, target_shape)
    elif loss == "binary_cross_entropy_with_logits":
        x = rng.normal(0, 3, input_shape)
        t = rng.uniform(0, 1, target_shape)
    elif loss == "kl_div":
        x = np.log(rng.uniform(0.05, 1, input_shape))
        t = (rng.normal(-1, 1, target_shape) if variant.options.get("log_target")
             else rng.uniform(0.01, 1, target_shape))
    elif loss == "poisson_nll_loss":
        x = (rng.normal(0, 1, input_shape) if variant.options.get("log_input", True)
             else rng.uniform(0.1, 4, input_shape))
        t = rng.poisson(2.5, target_shape).astype(np.float64)
    else:
        x = rng.normal(0, 2, input_shape)
        t = rng.normal(0, 2, target_shape)
        if variant.integer_target:
            t = np.round(t)
    arrays = {"input": np.asarray(x), "target": np.asarray(t)}
    loss_shape = np.broadcast_shapes(input_shape, target_shape)
    if "weight" in variant.weights:
        # A weight of the input's shape (mse_loss's, PyTorch's rule), or one broadcast into
        # the loss along its last axis (the binary cross-entropies').
        shape = (input_shape if spec(variant).argument("weight").shape == "input"
                 else loss_shape[-1:])
        arrays["weight"] = rng.uniform(0.2, 2, shape)
    if "pos_weight" in variant.weights:
        arrays["pos_weight"] = rng.uniform(0.5, 3, loss_shape[-1:] if loss_shape else ())
    return arrays


#: Differences at the kinks and beyond the reals, for the regression losses: NaN (PyTorch's
#: sign(NaN) is 0, so l1's gradient and smooth L1's with beta = 0 are 0 there, the others'
#: NaN), inf - inf, infinities either way, zeros, and values either side of each beta and
#: delta.
SPECIAL_INPUT = [math.nan, math.inf, 1.0, -math.inf, 0.0, 2.0, -3.0, math.nan, 0.5, -0.25,
                 0.3, -0.3]
SPECIAL_TARGET = [0.0, math.inf, 0.0, 1.0, 0.0, 2.5, 1.0, math.nan, 0.5, 0.0, 0.0, 0.0]
#: The variants those differences are for (unweighted: a weight only multiplies them).
SPECIAL_VARIANTS = [v for v in VARIANTS if not v.weights
                    and v.loss in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")]


def special_arrays(dtype: str) -> dict[str, np.ndarray]:
    """:data:`SPECIAL_INPUT` and :data:`SPECIAL_TARGET` in ``dtype`` (both floating)."""
    return {"input": np.array(SPECIAL_INPUT).astype(numpy_dtype(dtype)),
            "target": np.array(SPECIAL_TARGET).astype(numpy_dtype(dtype))}


def torch_loss(variant: Variant, tensors: dict[str, Any], reduction: str) -> Any:
    """PyTorch's loss of the same name on ``tensors`` (the oracle)."""
    import torch.nn.functional as F

    function = getattr(F, variant.loss)
    keywords = dict(variant.options)
    for name in variant.weights:
        keywords[name] = tensors[name]
    with warnings.catch_warnings():
        # PyTorch warns of broadcast targets and of kl_div's 'mean': the cases mean them.
        warnings.simplefilter("ignore", UserWarning)
        return function(tensors["input"], tensors["target"], reduction=reduction, **keywords)


def arrayloss_keywords(variant: Variant, arrays: dict[str, Any]) -> dict[str, Any]:
    keywords = dict(variant.options)
    for name in variant.weights:
        keywords[name] = arrays[name]
    return keywords


# ------------------------------------------------------------------ the oracle

#: Relative tolerance (of the largest magnitude) by dtype.  16-bit results are PyTorch's
#: float32 answer rounded once, as arrayloss computes them; one 16-bit rounding apart.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-10}


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rounded(arrays: dict[str, np.ndarray], dtype: str, variant: Variant
            ) -> dict[str, np.ndarray]:
    """The arguments as arrayloss gets them: floating ones in ``dtype``, integer targets
    int64."""
    result = {}
    for name, values in arrays.items():
        if name == "target" and variant.integer_target:
            result[name] = values.astype(np.int64)
        else:
            result[name] = values.astype(numpy_dtype(dtype))
    return result


def oracle(variant: Variant, arrays: dict[str, np.ndarray], reduction: str,
           grad_output: np.ndarray | float) -> dict[str, np.ndarray]:
    """PyTorch's loss and gradients (float64 for float64 inputs, else float32) on the exact
    values of ``arrays``: ``{"loss", "grad_input", "grad_target"}`` (no grad_target for an
    integer target)."""
    import torch

    compute = torch.float64 if all(a.dtype == np.float64 for a in arrays.values()
                                   if a.dtype.kind == "f") else torch.float32
    tensors = {}
    for name, values in arrays.items():
        if values.dtype.kind in "iu":
            # The same values as floats: PyTorch's Huber backward fails on an integer target.
            tensors[name] = torch.tensor(values.astype(np.float64), dtype=compute)
        else:
            tensors[name] = torch.tensor(values.astype(np.float64), dtype=compute,
                                         requires_grad=name in ("input", "target"))
    loss = torch_loss(variant, tensors, reduction)
    upstream = torch.as_tensor(np.asarray(grad_output, dtype=np.float64), dtype=compute)
    loss.backward(upstream.expand_as(loss) if reduction == "none" else upstream)
    result = {"loss": loss.detach().numpy().astype(np.float64),
              "grad_input": tensors["input"].grad.numpy().astype(np.float64)}
    if tensors["target"].requires_grad:
        result["grad_target"] = tensors["target"].grad.numpy().astype(np.float64)
    return result


def assert_close(got: Any, want: np.ndarray, dtype: str, what: str) -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if dtype != "float64":
        # Rounded once to the result dtype, as arrayloss does (float32 oracle above).
        with np.errstate(over="ignore"):  # beyond 65504 is inf in float16, both sides
            want = want.astype(numpy_dtype(dtype)).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)],
                                  want[~finite & ~np.isnan(want)], err_msg=what)
    if finite.any():
        scale = max(float(np.max(np.abs(want[finite]))), 1e-30)
        error = float(np.max(np.abs(got[finite] - want[finite])))
        assert error <= TOLERANCE[dtype] * scale, (
            f"{what}: off by {error:.3g} (scale {scale:.3g}, dtype {dtype})")
