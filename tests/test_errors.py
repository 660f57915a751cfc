"""Bad input: the documented error type, a message naming the argument, and no work done."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from _helpers import from_numpy

import arrayloss as al


def _gaussian_arrays(xp: Any, shape: tuple[int, ...] = (4, 3)) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(0)
    return (from_numpy(xp, rng.normal(size=shape)), from_numpy(xp, rng.normal(size=shape)),
            from_numpy(xp, rng.uniform(0.5, 2.0, shape)))


def _nll_arrays(xp: Any) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    return from_numpy(xp, rng.normal(size=(5, 3))), from_numpy(xp, np.array([0, 1, 2, 1, 0]))


class TestGaussianErrors:
    @pytest.mark.parametrize("reduction", ["abc", "elementwise_mean", None, "MEAN"])
    def test_bad_reduction(self, xp: Any, reduction: Any) -> None:
        with pytest.raises(ValueError, match="reduction must be one of"):
            al.gaussian_nll_loss(*_gaussian_arrays(xp), reduction=reduction)

    @pytest.mark.parametrize("var_shape", [(4, 2), (1, 1, 3), (3,), (1,), (), (5, 3)])
    def test_var_of_wrong_shape(self, xp: Any, var_shape: tuple[int, ...]) -> None:
        input, target, _ = _gaussian_arrays(xp)
        var = from_numpy(xp, np.ones(var_shape))
        with pytest.raises(ValueError, match=r"var with shape .* does not fit input"):
            al.gaussian_nll_loss(input, target, var)

    @pytest.mark.parametrize(("input_shape", "var_shape"),
                             [((4, 3), (3,)), ((4,), (3,)), ((2, 3, 5), (3, 5)), ((), (2,))])
    def test_var_shape_hint_names_shapes_that_fit(self, xp: Any, input_shape: tuple[int, ...],
                                                  var_shape: tuple[int, ...]) -> None:
        input, target, _ = _gaussian_arrays(xp, input_shape)
        with pytest.raises(ValueError, match="does not fit") as error:
            al.gaussian_nll_loss(input, target, from_numpy(xp, np.ones(var_shape)))
        message = str(error.value)
        assert "((" not in message and "))" not in message, message  # no doubled parentheses
        hint = message.split("; expected ", 1)[1]
        suggested = [tuple(int(n) for n in text.split(",") if n.strip())
                     for text in re.findall(r"\(([\d, ]*)\)", hint)]
        assert suggested, message
        for shape in suggested:  # every shape the hint names is one that the loss accepts
            al.gaussian_nll_loss(input, target, from_numpy(xp, np.ones(shape)))

    def test_var_with_a_zero_sized_mismatch(self, xp: Any) -> None:
        # PyTorch's size check lets (0, 1) through for (2, 3) and then fails in broadcasting.
        input, target, _ = _gaussian_arrays(xp, (2, 3))
        with pytest.raises(ValueError, match="var with shape"):
            al.gaussian_nll_loss(input, target, from_numpy(xp, np.ones((0, 1))))

    def test_target_that_does_not_broadcast(self, xp: Any) -> None:
        input, _, var = _gaussian_arrays(xp, (10, 2, 3))
        target = from_numpy(xp, np.ones((10, 2, 2)))
        with pytest.raises(ValueError, match=r"target with shape \(10, 2, 2\) does not broadcast"):
            al.gaussian_nll_loss(input, target, var)

    def test_negative_var_array(self, xp: Any) -> None:
        input, target, _ = _gaussian_arrays(xp)
        var = from_numpy(xp, np.array([[1.0], [0.5], [-1e-12], [2.0]]))
        with pytest.raises(ValueError, match="var has negative entries"):
            al.gaussian_nll_loss(input, target, var)
        with pytest.raises(ValueError, match="var has negative entries"):
            al.gaussian_nll_loss_backward(1.0, input, target, var)
        with pytest.raises(ValueError, match="var has negative entries"):
            al.gaussian_nll_loss_and_grad(input, target, var)
        # validate=False skips the value check (no host synchronisation on a GPU).
        al.gaussian_nll_loss(input, target, var, validate=False)

    @pytest.mark.parametrize("var", [-1.0, -1, np.float32(-0.5)])
    def test_negative_scalar_var_is_always_rejected(self, xp: Any, var: Any) -> None:
        input, target, _ = _gaussian_arrays(xp)
        with pytest.raises(ValueError, match=rf"^var is {float(var)!r}, which is negative; a "
                                             "variance must be >= 0$"):
            al.gaussian_nll_loss(input, target, var, validate=False)

    def test_0d_var_array_suggests_a_number(self, xp: Any) -> None:
        input, target, _ = _gaussian_arrays(xp)
        with pytest.raises(ValueError, match=r"var with shape \(\) does not fit .*pass it as a "
                                             r"number \(var=float\(v\)\)"):
            al.gaussian_nll_loss(input, target, from_numpy(xp, np.array(1.0)))

    def test_nan_and_negative_zero_var_pass(self, xp: Any) -> None:
        input, target, _ = _gaussian_arrays(xp, (2,))
        var = from_numpy(xp, np.array([np.nan, -0.0]))
        al.gaussian_nll_loss(input, target, var)
        al.gaussian_nll_loss(input, target, float("nan"))

    @pytest.mark.parametrize("size", [3, 70_000])  # either side of NumPy's argmin threshold
    @pytest.mark.parametrize("nan_first", [True, False])
    def test_negative_var_next_to_nan_is_found(self, xp: Any, size: int, nan_first: bool
                                               ) -> None:
        values = np.ones(size)
        values[[0, -1] if nan_first else [-1, 0]] = [np.nan, -1e-3]
        var = from_numpy(xp, values)
        input, target = from_numpy(xp, np.zeros(size)), from_numpy(xp, np.ones(size))
        with pytest.raises(ValueError, match="var has negative entries"):
            al.gaussian_nll_loss(input, target, var)
        values[values < 0] = 0.5
        loss = al.gaussian_nll_loss(input, target, from_numpy(xp, values))
        assert np.isnan(float(loss))  # NaN passes through, as in PyTorch

    @pytest.mark.parametrize("var", [True, 1 + 2j, np.complex64(1), "1.0", [1.0, 2.0]])
    def test_var_of_wrong_kind(self, xp: Any, var: Any) -> None:
        input, target, _ = _gaussian_arrays(xp)
        with pytest.raises(TypeError, match="var must be"):
            al.gaussian_nll_loss(input, target, var)

    def test_integer_input(self, xp: Any) -> None:
        _, target, var = _gaussian_arrays(xp)
        input = from_numpy(xp, np.ones((4, 3), dtype=np.int64))
        with pytest.raises(TypeError, match="input must have a real floating dtype"):
            al.gaussian_nll_loss(input, target, var)

    def test_bool_target(self, xp: Any) -> None:
        input, _, var = _gaussian_arrays(xp)
        target = from_numpy(xp, np.ones((4, 3), dtype=bool))
        with pytest.raises(TypeError, match="target must have a real floating or integer dtype"):
            al.gaussian_nll_loss(input, target, var)

    @pytest.mark.parametrize("eps", [-1e-6, float("inf"), float("nan")])
    def test_bad_eps_value(self, xp: Any, eps: float) -> None:
        with pytest.raises(ValueError, match="eps must be finite and >= 0"):
            al.gaussian_nll_loss(*_gaussian_arrays(xp), eps=eps)

    @pytest.mark.parametrize("eps", ["1e-6", None, True])
    def test_bad_eps_type(self, xp: Any, eps: Any) -> None:
        with pytest.raises(TypeError, match="eps must be a real number"):
            al.gaussian_nll_loss(*_gaussian_arrays(xp), eps=eps)

    @pytest.mark.parametrize("flag", ["full", "validate"])
    def test_flags_must_be_bool(self, xp: Any, flag: str) -> None:
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            al.gaussian_nll_loss(*_gaussian_arrays(xp), **{flag: 1})

    def test_grad_output_shape_for_none(self, xp: Any) -> None:
        arrays = _gaussian_arrays(xp)
        with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(4, 3\)"):
            al.gaussian_nll_loss_backward(from_numpy(xp, np.ones((3,))), *arrays,
                                          reduction="none")
        with pytest.raises(TypeError, match="grad_output must be an array"):
            al.gaussian_nll_loss_backward(1.0, *arrays, reduction="none")

    def test_grad_output_for_mean_must_be_scalar(self, xp: Any) -> None:
        arrays = _gaussian_arrays(xp)
        with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(\)"):
            al.gaussian_nll_loss_backward(from_numpy(xp, np.ones((4, 3))), *arrays)
        with pytest.raises(TypeError, match="a real number or a 0-d array"):
            al.gaussian_nll_loss_backward("1", *arrays)

    def test_unknown_gradient_name(self, xp: Any) -> None:
        with pytest.raises(ValueError, match="wrt may contain only"):
            al.gaussian_nll_loss_backward(1.0, *_gaussian_arrays(xp), wrt=("input", "mean"))

    def test_loss_and_grad_needs_a_scalar_loss(self, xp: Any) -> None:
        with pytest.raises(ValueError, match="needs reduction='mean' or 'sum'"):
            al.gaussian_nll_loss_and_grad(*_gaussian_arrays(xp), reduction="none")

    def test_module_checks_options_when_built(self) -> None:
        with pytest.raises(ValueError, match="reduction must be one of"):
            al.GaussianNLLLoss(reduction="abc")
        with pytest.raises(TypeError):
            al.GaussianNLLLoss(True)  # type: ignore[misc]  # options are keyword-only
        with pytest.raises(TypeError):
            al.GaussianNLLLoss(size_average=True)  # type: ignore[call-arg]


class TestNLLErrors:
    @pytest.mark.parametrize("reduction", ["foo", None])
    def test_bad_reduction(self, xp: Any, reduction: Any) -> None:
        with pytest.raises(ValueError, match="reduction must be one of"):
            al.nll_loss(*_nll_arrays(xp), reduction=reduction)

    def test_zero_dim_input(self, xp: Any) -> None:
        with pytest.raises(ValueError, match="input must have at least 1 dimension"):
            al.nll_loss(from_numpy(xp, np.array(1.0)), from_numpy(xp, np.array(0)))

    @pytest.mark.parametrize(
        ("input_shape", "target_shape"),
        [((4, 3), (3,)), ((10, 3), (10, 2)), ((2, 3, 4), (2, 5)), ((2, 3, 4, 5), (2, 4, 6)),
         ((2, 3, 4, 5), (2, 20)), ((4, 3), ())],
    )
    def test_target_shape_mismatch(self, xp: Any, input_shape: tuple[int, ...],
                                   target_shape: tuple[int, ...]) -> None:
        input = from_numpy(xp, np.zeros(input_shape))
        target = from_numpy(xp, np.zeros(target_shape, dtype=np.int64))
        with pytest.raises(ValueError, match=r"target with shape .* does not match input"):
            al.nll_loss(input, target)

    @pytest.mark.parametrize("loss", ["nll_loss", "cross_entropy"])
    @pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (3,)])
    def test_one_hot_integer_target_gets_a_hint(self, xp: Any, loss: str,
                                               shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(1)
        axis = 0 if len(shape) == 1 else 1
        labels = rng.integers(0, shape[axis], size=shape[:axis] + shape[axis + 1:])
        one_hot = np.moveaxis(np.eye(shape[axis], dtype=np.int64)[labels], -1, axis)
        logits = rng.normal(size=shape)
        log_probs = logits - np.log(np.exp(logits).sum(axis=axis, keepdims=True))
        input = from_numpy(xp, log_probs if loss == "nll_loss" else logits)
        with pytest.raises(ValueError, match=r"does not match|must have shape") as error:
            getattr(al, loss)(input, from_numpy(xp, one_hot))
        message = str(error.value)
        assert "looks one-hot: " in message and f"target.argmax(axis={axis})" in message
        # Following the hint gives the loss of those classes: -mean log p[label], in float64.
        expected = -np.take_along_axis(log_probs, np.expand_dims(labels, axis), axis).mean()
        indices = from_numpy(xp, one_hot.argmax(axis=axis))
        np.testing.assert_allclose(float(getattr(al, loss)(input, indices)), expected,
                                   rtol=1e-12)
        if loss == "cross_entropy":
            assert "cast it to the input's floating dtype (target.astype(input.dtype))" in message
            probabilities = from_numpy(xp, one_hot.astype(log_probs.dtype))
            np.testing.assert_allclose(float(al.cross_entropy(input, probabilities)), expected,
                                       rtol=1e-12)
        else:
            assert "astype" not in message  # NLL takes no probabilities

    def test_unbatched_target_shape(self, xp: Any) -> None:
        input = from_numpy(xp, np.zeros(3))
        with pytest.raises(ValueError, match=r"for 1-D input \(C,\) target must have shape"):
            al.nll_loss(input, from_numpy(xp, np.zeros(2, dtype=np.int64)))

    @pytest.mark.parametrize("dtype", ["float32", "bool"])
    def test_target_dtype(self, xp: Any, dtype: str) -> None:
        input, _ = _nll_arrays(xp)
        target = from_numpy(xp, np.zeros(5, dtype=dtype))
        with pytest.raises(TypeError, match="target must have an integer dtype"):
            al.nll_loss(input, target)

    def test_integer_input(self, xp: Any) -> None:
        _, target = _nll_arrays(xp)
        with pytest.raises(TypeError, match="input must have a real floating dtype"):
            al.nll_loss(from_numpy(xp, np.zeros((5, 3), dtype=np.int64)), target)

    @pytest.mark.parametrize("weight_shape", [(4,), (1, 3), (2,)])
    def test_weight_shape(self, xp: Any, weight_shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\)"):
            al.nll_loss(*_nll_arrays(xp), from_numpy(xp, np.ones(weight_shape)))

    def test_weight_dtype(self, xp: Any) -> None:
        input, target = _nll_arrays(xp)
        weight = from_numpy(xp, np.ones(3, dtype=np.float32))
        with pytest.raises(TypeError, match="weight must have the input's dtype"):
            al.nll_loss(input, target, weight)

    @pytest.mark.parametrize("bad", [3, -1, 100, -100])
    def test_target_out_of_range(self, xp: Any, bad: int) -> None:
        input, _ = _nll_arrays(xp)
        target = from_numpy(xp, np.array([0, 1, bad, 2, 0]))
        for call in (lambda: al.nll_loss(input, target, ignore_index=-7),
                     lambda: al.nll_loss_backward(1.0, input, target, ignore_index=-7),
                     lambda: al.nll_loss_and_grad(input, target, ignore_index=-7)):
            with pytest.raises(al.TargetOutOfRangeError,
                               match=rf"target contains {bad}, .*\[0, 3\).*ignore_index=-7"):
                call()
        # It is both an IndexError (PyTorch's CPU type) and a ValueError.
        assert issubclass(al.TargetOutOfRangeError, IndexError)
        assert issubclass(al.TargetOutOfRangeError, ValueError)

    def test_out_of_range_with_validation_off_reads_nothing_out_of_bounds(self, xp: Any) -> None:
        input, _ = _nll_arrays(xp)
        target = from_numpy(xp, np.array([0, 1, 7, 2, 0]))
        al.nll_loss(input, target, validate=False)  # no error, no out-of-bounds read

    def test_uint64_target_beyond_int64_is_out_of_range(self, xp: Any) -> None:
        if getattr(xp, "uint64", None) is None:
            pytest.skip("no uint64")
        input, _ = _nll_arrays(xp)
        target = from_numpy(xp, np.array([0, 1, 2**64 - 100, 2, 0], dtype=np.uint64))
        with pytest.raises(al.TargetOutOfRangeError, match=str(2**64 - 100)):
            al.nll_loss(input, target)

    def test_zero_classes_with_a_target(self, xp: Any) -> None:
        input = from_numpy(xp, np.zeros((2, 0)))
        with pytest.raises(al.TargetOutOfRangeError, match=r"\[0, 0\)"):
            al.nll_loss(input, from_numpy(xp, np.array([0, 0])))

    @pytest.mark.parametrize(("ignore_index", "error"),
                             [(1.0, TypeError), (True, TypeError), ("1", TypeError),
                              (2**63, ValueError), (-(2**63) - 1, ValueError)])
    def test_bad_ignore_index(self, xp: Any, ignore_index: Any, error: type) -> None:
        with pytest.raises(error, match="ignore_index must"):
            al.nll_loss(*_nll_arrays(xp), ignore_index=ignore_index)

    def test_grad_output_shape(self, xp: Any) -> None:
        with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(5,\)"):
            al.nll_loss_backward(from_numpy(xp, np.ones(4)), *_nll_arrays(xp), reduction="none")

    def test_module_checks_options_when_built(self) -> None:
        with pytest.raises(ValueError, match="reduction must be one of"):
            al.NLLLoss(reduction="foo")
        with pytest.raises(TypeError, match="weight must be an array or None"):
            al.NLLLoss(weight=[1.0, 2.0])


def test_mixed_array_libraries() -> None:
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="same array library"):
        al.gaussian_nll_loss(np.ones(3), strict.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="same array library"):
        al.nll_loss(np.zeros((2, 3)), strict.asarray([0, 1]))
    with pytest.raises(TypeError, match="grad_output must"):
        al.nll_loss_backward(strict.ones(2), np.zeros((2, 3)), np.array([0, 1]),
                             reduction="none")


def test_not_an_array() -> None:
    with pytest.raises(TypeError, match="input must be an array, got list"):
        al.gaussian_nll_loss([1.0, 2.0], np.ones(2), 1.0)
    with pytest.raises(TypeError, match="target must be an array, got list"):
        al.nll_loss(np.zeros((2, 3)), [0, 1])


def test_devices_must_match() -> None:
    strict = pytest.importorskip("array_api_strict")
    input = strict.ones(3, device=strict.Device("device1"))
    with pytest.raises(ValueError, match="same device"):
        al.gaussian_nll_loss(input, strict.ones(3), strict.ones(3))
    other = strict.ones(3, device=strict.Device("device1"))
    with pytest.raises(ValueError, match="grad_output must be on the inputs' device"):
        al.gaussian_nll_loss_backward(other, strict.ones(3), strict.ones(3), 1.0,
                                      reduction="none")
