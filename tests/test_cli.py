"""``python -m arrayloss``: its arguments and what its table says."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import arrayloss.__main__ as cli
from arrayloss.__main__ import LOSSES, _cupy_unavailable, main, shadowed_package_message

ROOT = Path(__file__).resolve().parents[1]


def test_table_checks_against_float64_and_lines_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "10", "--budget", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "problem: 1 x 10 float32 = 10 elements (--size 10)" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    assert "max rel. error vs float64" in lines[header]
    table = [line for line in lines[header + 2:] if line.startswith(("numpy", "array_api",
                                                                     "torch", "jax", "cupy"))]
    assert table and all(line.split()[-2] == "ok" for line in table)
    # Right-aligned numbers: every row ends where the header's last column ends.
    assert {len(line) for line in table} == {len(lines[header])}
    errors = [float(re.findall(r"\d\.\de[-+]\d\d", line)[0]) for line in table]
    assert max(errors) < 1e-4 and min(errors) < 1e-6  # float32 vs float64, not 0 vs itself
    assert "all results agree with the float64 formulas" in out


def test_every_loss_runs_every_call(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "50", "--budget", "0.001"]) == 0
    out = capsys.readouterr().out
    calls = {tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("numpy ")}
    names = {"gaussian_nll", "nll", "cross_entropy"}  # every public loss, at least
    assert names <= {loss.name for loss in LOSSES}
    assert calls == {(loss.name, call) for loss in LOSSES
                     for call in ("forward", "backward", "loss_and_grad")}
    assert "label_smoothing=0.1" in out  # the problem line says what cross-entropy runs
    assert "formulas written in arrayloss/__main__.py (no arrayloss code)" in out


#: PyTorch's version of each loss of the main job, as (loss, the inputs it differentiates)
#: from float64 tensors of the job's inputs.  A loss added to LOSSES needs its line here.
TORCH_LOSSES: dict[str, Callable[..., tuple[Any, list[Any]]]] = {
    "gaussian_nll": lambda F, options, mean, target, var: (
        F.gaussian_nll_loss(mean, target, var, **options), [mean, target, var]),
    "nll": lambda F, options, log_probs, labels, weight: (
        F.nll_loss(log_probs, labels, weight.detach(), **options), [log_probs]),
    "cross_entropy": lambda F, options, logits, labels, weight: (
        F.cross_entropy(logits, labels, weight.detach(), **options), [logits]),
    **{loss: (lambda F, options, x, t, loss=loss: (getattr(F, loss)(x, t, **options), [x, t]))
       for loss in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
                    "poisson_nll_loss")},
}


@pytest.mark.parametrize("loss", LOSSES, ids=[loss.name for loss in LOSSES])
def test_the_references_are_pytorchs_losses(loss: cli.LossCheck) -> None:
    # The job's float64 formulas, against PyTorch's autograd of its own loss.
    assert loss.name in TORCH_LOSSES, f"add PyTorch's {loss.name} to TORCH_LOSSES"
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch.nn.functional as F

    inputs = loss.make_inputs(np.random.default_rng(3), 30, 7)
    value, *grads = loss.reference(*inputs)
    tensors = [torch.tensor(a, dtype=torch.float64 if a.dtype.kind == "f" else torch.int64,
                            requires_grad=a.dtype.kind == "f") for a in inputs]
    expected, differentiated = TORCH_LOSSES[loss.name](F, loss.options, *tensors)
    torch_grads = torch.autograd.grad(expected, differentiated)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    for mine, theirs in zip(grads, torch_grads, strict=True):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-10, atol=1e-15)


def test_a_wrong_result_is_a_mismatch(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(LOSSES[-1], forward=lambda *args, **kw: LOSSES[-1].forward(
        *args, **kw) * 1.001)
    monkeypatch.setattr(cli, "LOSSES", (*LOSSES[:-1], wrong))
    assert main(["--size", "20", "--budget", "0.001"]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"numpy +{wrong.name} forward +1\.0e-03 +MISMATCH", out), out
    assert "SOME RESULTS DISAGREE" in out


def test_missing_libraries_are_explained(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--size", "100", "--budget", "0.001"])
    out = capsys.readouterr().out
    reason = _cupy_unavailable()
    if reason is not None:
        assert f"not used: cupy: {reason}" in out
        assert any(word in reason for word in ("not installed", "driver", "device", "kernel"))


@pytest.mark.parametrize("argv", [["--size", "-5"], ["--size", "0"], ["--size", "ten"],
                                  ["--budget", "0"], ["--bogus"]])
def test_bad_arguments_exit_2_with_a_message(argv: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and "float64 formulas" in out


def test_run_from_the_folder_above_the_checkout_says_why(tmp_path: Path) -> None:
    # The checkout seen as `arrayloss` from its parent folder: Python imports the folder as a
    # namespace package and runs the checkout's top-level __main__.py.  Only the standard
    # library is on the path, so no installed arrayloss can take its place.
    (tmp_path / "arrayloss").symlink_to(ROOT, target_is_directory=True)
    stdlib = [path for path in sys.path if "site-packages" not in path and path != str(ROOT)
              and path not in ("", ".")]
    code = ("import runpy, sys; sys.path[:] = [sys.argv[1], *sys.argv[2:]]; "
            "runpy.run_module('arrayloss', run_name='__main__', alter_sys=True)")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), *stdlib], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert f"found the folder {tmp_path / 'arrayloss'}, not the arrayloss package" in done.stderr
    assert "cd arrayloss" in done.stderr and "pip install -e arrayloss" in done.stderr


def test_a_namespace_package_in_arrayloss_place_is_named() -> None:
    import arrayloss

    assert shadowed_package_message(arrayloss) is None
    folder = types.ModuleType("arrayloss")  # what `import arrayloss` gives above a checkout
    folder.__path__ = ["/somewhere/arrayloss"]
    message = shadowed_package_message(folder)
    assert message is not None
    assert "found the folder /somewhere/arrayloss, not the arrayloss package" in message
    assert "cd arrayloss" in message
