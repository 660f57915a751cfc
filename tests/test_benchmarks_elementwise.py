"""``python -m benchmarks.elementwise``: a tiny run writes its table and record, with the
targets judged from the per-round ratios (the timings themselves are not tested here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmark times against PyTorch")

from benchmarks import elementwise


def test_a_tiny_run_writes_the_table_and_the_record(tmp_path: Path) -> None:
    code = elementwise.main(["--rows", "8", "--budget", "0.05", "--max-rounds", "3",
                             "--losses", "mse_loss", "kl_div", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads((tmp_path / "elementwise.json").read_text())
    assert [row["loss"] for row in record["rows"]] == ["mse_loss", "kl_div"]
    for row in record["rows"]:
        assert row["speedup"] > 0 and row["elements"] == 8000
        assert row["speed_verdict"] in ("met", "missed", "inconclusive")
        assert row["memory_verdict"] in ("met", "missed")
        assert set(row["times_s"]) >= {"arrayloss numpy", "torch cpu"}
    table = (tmp_path / "elementwise.md").read_text()
    assert "speedup vs PyTorch at least 1x (no slower)" in table
    assert "| mse_loss 8x1000 |" in table


def test_the_calls_compute_what_pytorch_computes() -> None:
    import torch

    for loss in elementwise.ELEMENTWISE_LOSSES:
        arrays = elementwise.make_arrays(loss, (4, 1000))
        loss_value, (grad, _) = elementwise.arrayloss_call(loss, arrays)()
        want, want_grad = elementwise.torch_call(
            loss, {name: torch.from_numpy(a) for name, a in arrays.items()})()
        np.testing.assert_allclose(loss_value, want.detach().numpy(), rtol=2e-5, err_msg=loss)
        np.testing.assert_allclose(grad, want_grad.numpy(), rtol=2e-5, atol=1e-9,
                                   err_msg=loss)
