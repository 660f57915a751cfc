"""The worked examples run, check their own gradients, and learn (numbers, not timings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # as when run as a script: `_training` is beside it
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_heteroscedastic_regression_learns_the_noise(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    example = _load("heteroscedastic_regression")
    metrics = example.main(["--steps", "1500", "--out", str(tmp_path)])
    assert metrics["gradient_check_error"] < 1e-6
    assert example.learned(metrics), metrics
    assert metrics["std_correlation"] > 0.9
    assert metrics["test_nll"] < metrics["constant_variance_nll"]
    assert (tmp_path / "heteroscedastic_regression.png").stat().st_size > 10_000


def test_classification_learns_the_spirals(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    example = _load("classification")
    metrics = example.main(["--steps", "800", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # One labelled line per number; a small final loss is printed as itself, not 0.0000.
    assert out.count("gradient check") == 1 and "0.0000" not in out
    assert f"{metrics['final_loss']:.4g}" in out
    assert metrics["gradient_check_error"] < 1e-6
    assert example.learned(metrics), metrics
    assert metrics["test_accuracy"] > 0.9
    assert (tmp_path / "classification.png").stat().st_size > 10_000


def test_heteroscedastic_regression_with_beta_nll() -> None:
    example = _load("heteroscedastic_regression")
    metrics = example.main(["--steps", "1500", "--beta", "0.5"])
    # beta-NLL learns the noise too (Seitzer et al.): better than one variance for all x.
    assert example.learned(metrics), metrics


def test_dask_regression_trains_data_parallel() -> None:
    pytest.importorskip("dask.array", reason="Dask is not installed (pip install '.[dask]')")
    example = _load("dask_regression")
    metrics = example.main(["--steps", "100"])
    # The gradient summed over chunks is the in-memory one, and the model learns the noise.
    assert metrics["gradient_check_error"] < 1e-10
    assert example.learned(metrics), metrics
