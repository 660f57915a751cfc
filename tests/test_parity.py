"""Parity with PyTorch 2.13: every case of ``_cases.py``, forward and every gradient.

Two references: the answers stored in ``reference/torch_reference.npz`` (made by PyTorch 2.13
with ``reference/make_reference.py``), checked on every backend; and, where PyTorch is
installed, PyTorch itself, run live on the same inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cases import Case, all_cases, grad_output, one_per_stratum, torch_oracle
from _helpers import from_numpy, to_numpy
from array_api_compat import array_namespace

import arrayloss as al

REFERENCE_FILE = Path(__file__).parent / "reference" / "torch_reference.npz"
CASES = all_cases()
_ONE_PER_STRATUM = {case.name for case in one_per_stratum(CASES)}

# Relative tolerance per dtype, applied against the largest magnitude of the reference.
# float16 inputs are computed in float32 and rounded once; the reference is float64 PyTorch.
TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3}


@functools.cache
def _stored() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_FILE) as data:
        return {key: data[key] for key in data.files}


def _stored_case(case: Case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    stored = _stored()
    inputs = {key: stored[f"{case.name}/in/{key}"] for key in case.arrays}
    outputs = {key.split("/")[-1]: value for key, value in stored.items()
               if key.startswith(f"{case.name}/out/")}
    return inputs, outputs


def run_arrayloss(xp: Any, case: Case, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The loss and gradients arrayloss gives for ``case`` on backend ``xp``, as NumPy."""
    def move(key: str) -> Any:
        value = arrays[key]
        if key == "target" and np.issubdtype(value.dtype, np.integer):
            return from_numpy(xp, value.astype(case.target_dtype))
        return from_numpy(xp, value.astype(case.dtype))

    functions = {"nll": (al.nll_loss, al.nll_loss_backward, al.nll_loss_and_grad),
                 "cross_entropy": (al.cross_entropy, al.cross_entropy_backward,
                                   al.cross_entropy_and_grad)}

    result: dict[str, np.ndarray] = {}
    if case.loss == "gaussian":
        args = [move("input"), move("target"),
                case.var_scalar if case.var_scalar is not None else move("var")]
        loss = al.gaussian_nll_loss(*args, reduction=case.reduction, **case.options)
    else:
        args = [move("input"), move("target"), move("weight") if "weight" in arrays else None]
        loss = functions[case.loss][0](*args, reduction=case.reduction, **case.options)
    result["loss"] = to_numpy(loss)

    upstream64 = grad_output(case, tuple(loss.shape))
    upstream: Any = (from_numpy(xp, upstream64.astype(case.dtype)) if case.reduction == "none"
                     else float(upstream64))
    if case.loss == "gaussian":
        grads = al.gaussian_nll_loss_backward(upstream, *args, reduction=case.reduction,
                                              **case.options)
        for key, grad in zip(("input", "target", "var"), grads, strict=True):
            if grad is not None:
                result[f"grad_{key}"] = to_numpy(grad)
    else:
        grad = functions[case.loss][1](upstream, *args, reduction=case.reduction,
                                       **case.options)
        result["grad_input"] = to_numpy(grad)

    if case.reduction != "none":
        # The fused entry point: its gradient is the backward's with grad_output = 1.
        if case.loss == "gaussian":
            fused_loss, fused_grads = al.gaussian_nll_loss_and_grad(
                *args, reduction=case.reduction, **case.options)
            fused = dict(zip(("input", "target", "var"), fused_grads, strict=True))
        else:
            fused_loss, fused_grad = functions[case.loss][2](*args, reduction=case.reduction,
                                                             **case.options)
            fused = {"input": fused_grad}
        result["fused_loss"] = to_numpy(fused_loss)
        for key, grad in fused.items():
            if grad is not None:
                result[f"fused_grad_{key}"] = to_numpy(grad) * float(upstream64)
    return result


def assert_matches(case: Case, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every output of arrayloss against the reference, with the case dtype's tolerance."""
    rtol = TOLERANCE[case.dtype]
    for key, expected in want.items():
        for name in (key, f"fused_{key}"):
            if name not in got:
                assert name.startswith("fused_") or (
                    # A scalar var has no gradient in arrayloss; PyTorch's is absent too.
                    key == "grad_var" and case.var_scalar is not None
                ) or (
                    # A probability target's gradient comes only through autograd.
                    key == "grad_target" and case.loss == "cross_entropy"
                ), f"{case.name}: arrayloss gave no {name}"
                continue
            actual = got[name]
            assert actual.shape == expected.shape, f"{case.name}: {name} shape"
            if name in ("loss", "fused_loss") or name.startswith(("grad_", "fused_grad_")):
                assert actual.dtype == np.dtype(case.dtype), f"{case.name}: {name} dtype"
            scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0)
            np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                                       atol=rtol * scale, equal_nan=True,
                                       err_msg=f"{case.name}: {name}")


def _supports(xp: Any, case: Case) -> bool:
    return getattr(xp, case.dtype, None) is not None and getattr(
        xp, case.target_dtype, None) is not None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_matches_stored_pytorch_answers(xp: Any, backend_name: str, case: Case) -> None:
    if not _supports(xp, case):
        pytest.skip(f"{case.dtype} or {case.target_dtype} not in this library")
    if backend_name == "jax" and case.name not in _ONE_PER_STRATUM:
        # JAX compiles each operation again for every new shape and dtype: it runs one case
        # of each code path; the other backends run every case.
        pytest.skip("JAX runs one case per stratum (tests/_cases.py: one_per_stratum)")
    inputs, outputs = _stored_case(case)
    assert_matches(case, run_arrayloss(xp, case, inputs), outputs)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_matches_live_pytorch(case: Case) -> None:
    pytest.importorskip("torch")
    inputs, _ = _stored_case(case)
    live = Case(case.name, case.loss, case.dtype, case.reduction, inputs, case.options,
                case.var_scalar, case.target_dtype)
    xp = array_namespace(np.empty(0))
    assert_matches(case, run_arrayloss(xp, case, inputs), torch_oracle(live))


def test_reference_file_covers_every_case() -> None:
    stored = _stored()
    missing = [case.name for case in CASES if f"{case.name}/out/loss" not in stored]
    assert not missing, f"regenerate reference/torch_reference.npz; missing {missing[:5]}"
