"""The benchmark suite runs end to end on the tiniest sizes and writes well-formed results.

Timings are never asserted: only that every output exists and is sane.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from benchmarks.__main__ import main
from benchmarks.cases import Case, model_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--device", "cpu", "--quick", "--max-elements", "16384", "--budget", "0.01",
                 "--max-repeats", "3", "--warmup", "1", "--no-progress",
                 "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    meta, rows = data["meta"], data["results"]
    assert meta["device_kind"] == "cpu" and "numpy" in meta["versions"]
    assert rows, "no measurement was taken"
    providers = {row["provider"] for row in rows}
    assert "arrayloss numpy" in providers
    for row in rows:
        assert "error" not in row, row
        assert row["median_s"] > 0 and math.isfinite(row["median_s"])
        assert row["p20_s"] <= row["median_s"] <= row["p80_s"]
        assert row["model_bytes"] == model_bytes(Case(**{k: v for k, v in row["case"].items()
                                                          if k != "elements"}))
        assert row["gbps"] > 0
    for loss in ("gaussian_nll", "nll"):
        assert (out / f"{loss}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# arrayloss benchmarks") and "## Targets" in markdown
    assert {target["status"] for target in data["targets"]} <= {
        "met", "missed", "inconclusive", "not measured"}
    # CPU providers are timed in interleaved rounds: each row keeps its per-round times, and
    # every speedup carries the range of its per-round ratios.
    for row in rows:
        assert len(row["round_s"]) >= 7
        if "speedup_vs_baseline" in row:
            low, high = row["speedup_spread"]
            assert low <= row["speedup_vs_baseline"] <= high
    # Issue 16's overhead targets: arrayloss (validated or not) against the bare expression,
    # from the per-round differences, for NLL 32x10 and GNLL 100 at least.
    overhead = [target for target in data["targets"] if target["metric"] == "overhead_us"]
    assert len(overhead) == 8
    measured = [target for target in overhead if target["value"] is not None]
    for shape in ("(32, 10)", "(1, 100)"):
        assert sum(shape in target["target"] for target in measured) == 2  # both validations
    for target in measured:
        low, high = target["spread"]
        assert low <= target["value"] <= high and math.isfinite(target["value"])
    memory = [target for target in data["targets"] if target["metric"] == "cases_over"]
    if importlib.util.find_spec("torch") is not None:
        assert memory and all(target["cases"] > 0 for target in memory)
    else:  # the memory targets are PyTorch's peak plus one output: none without PyTorch
        assert not memory and "torch cpu" not in providers


def test_verdicts_read_the_spread_of_the_round_ratios() -> None:
    from benchmarks.report import add_derived, verdict

    assert verdict(1.3, [1.1, 1.5], 1.0) == "met"
    assert verdict(0.7, [0.6, 0.8], 1.0) == "missed"
    assert verdict(1.05, [0.9, 1.2], 1.0) == "inconclusive"
    assert verdict(None, None, 1.0) == "not measured"
    assert verdict(1.2, None, 1.0) == "met"  # a single measurement (the GPU's events)
    # A ceiling (microseconds above the bare expression): lower is better.
    assert verdict(3.0, [2.0, 4.0], 5.0, higher_is_better=False) == "met"
    assert verdict(6.5, [5.5, 7.0], 5.0, higher_is_better=False) == "missed"
    assert verdict(5.0, [4.0, 6.0], 5.0, higher_is_better=False) == "inconclusive"
    case = {"loss": "nll", "op": "forward", "reduction": "mean", "variant": "plain",
            "dtype": "float32", "shape": [8, 3], "elements": 24}
    rows = [{"case_key": "k", "case": case, "provider": "torch cpu", "model_bytes": 100,
             "median_s": 2.0, "round_s": [2.0, 2.0, 4.0, 2.0, 2.0]},
            {"case_key": "k", "case": case, "provider": "arrayloss numpy", "model_bytes": 100,
             "median_s": 1.0, "round_s": [1.0, 1.0, 1.0, 1.0, 4.0]}]
    add_derived(rows, "cpu")
    ours = rows[1]
    # Per-round ratios 2, 2, 4, 2, 0.5: the median ratio, not the ratio of the medians.
    assert ours["speedup_vs_baseline"] == 2.0
    # Sorted ratios 0.5, 2, 2, 2, 4: 20th and 80th percentiles by linear interpolation.
    assert ours["speedup_spread"] == pytest.approx([1.7, 2.4])


def test_cpu_targets_judge_every_nll_forward_shape_of_the_issue() -> None:
    """NLL forward: no slower than PyTorch from 100,000 gathered elements, within 1.5x at
    10000x1000 (10,000 gathered), and the smaller ones by the overhead target alone."""
    from benchmarks.report import evaluate_targets

    rows = []
    for shape, ratio in (((10000, 1000), 0.7), ((100000, 100), 0.9), ((1000, 10), 0.3)):
        case = {"loss": "nll", "op": "forward", "reduction": "mean", "variant": "plain",
                "dtype": "float32", "shape": list(shape), "elements": math.prod(shape)}
        rows.append({"case_key": str(shape), "case": case, "provider": "arrayloss numpy",
                     "speedup_vs_baseline": ratio, "speedup_spread": [ratio - 0.02,
                                                                      ratio + 0.02]})
    verdicts = {target["target"]: target["status"] for target in evaluate_targets(rows, "cpu")
                if target["target"].startswith("CPU NLL forward")}
    assert verdicts["CPU NLL forward (10000, 1000): speedup vs PyTorch at least 0.67x "
                    "(time at most 1.5x PyTorch's)"] == "met"
    assert verdicts["CPU NLL forward (100000, 100): speedup vs PyTorch at least 1x "
                    "(no slower)"] == "missed"
    assert not any("(1000, 10)" in name for name in verdicts)


def test_torch_cpu_targets_judge_every_case_from_1e5_elements() -> None:
    """Issue 31: arrayloss on CPU tensors no slower than PyTorch's own function on every case
    of PyTorch's from 1e5 elements (an NLL forward counts its targets): missed where a case
    is slower in 80% of its rounds, inconclusive where its range crosses 1."""
    from benchmarks.report import add_derived, evaluate_targets

    def rows(ratios: dict[tuple[str, str, tuple[int, ...]], list[float]]
             ) -> list[dict[str, Any]]:
        out = []
        for (op, variant, shape), theirs in ratios.items():
            case = {"loss": "nll", "op": op, "reduction": "mean", "variant": variant,
                    "dtype": "float32", "shape": list(shape), "elements": math.prod(shape)}
            for provider, rounds in (("arrayloss torch-cpu", [1.0] * len(theirs)),
                                     ("torch cpu", theirs)):
                out.append({"case_key": f"{op}{variant}{shape}", "case": case,
                            "provider": provider, "median_s": 1.0, "round_s": rounds,
                            "model_bytes": 1})
        add_derived(out, "cpu")
        return out

    def target(ratios: dict[tuple[str, str, tuple[int, ...]], list[float]]) -> dict[str, Any]:
        [found] = [t for t in evaluate_targets(rows(ratios), "cpu")
                   if t["target"].startswith("CPU tensors, nll")]
        return found

    faster = [1.2, 1.3, 1.25, 1.4, 1.2]
    met = target({("forward", "plain", (100000, 100)): faster,
                  ("loss_and_grad", "plain", (1000, 100)): faster,
                  # 1,024 targets of 1e6 elements, and an option PyTorch has no function of:
                  ("forward", "plain", (1024, 1000)): [0.2] * 5,
                  ("forward", "log_var", (100000, 100)): [0.2] * 5})
    assert met["status"] == "met" and met["cases"] == 2 and met["value"] == 0
    slower = target({("forward", "plain", (100000, 100)): faster,
                     ("backward", "weighted-ignored", (65536, 10)): [0.5, 0.6, 0.55, 0.5, 0.6]})
    assert slower["status"] == "missed" and slower["value"] == 1
    assert "backward weighted-ignored 65536x10 0.55x" in slower["target"]
    unsure = target({("backward", "plain", (65536, 10)): [0.8, 1.3, 0.9, 1.2, 1.1]})
    assert unsure["status"] == "inconclusive" and unsure["unsure"] == 1
    assert target({})["status"] == "not measured"


def test_gaussian_variant_targets_read_the_interleaved_plain_rounds() -> None:
    """Issue 14's "within 1.1x of plain GNLL" on the CPU: the per-round ratios of the variant's
    time to plain GNLL's timed in the same rounds, not the medians of two cases timed apart."""
    from benchmarks.report import PLAIN_GAUSSIAN, evaluate_targets

    def case(variant: str) -> dict[str, Any]:
        return {"loss": "gaussian_nll", "op": "forward", "reduction": "mean",
                "variant": variant, "dtype": "float32", "shape": [64, 8], "elements": 512}

    rows = [{"case_key": "beta", "case": case("beta"), "provider": "arrayloss numpy",
             "median_s": 1.0, "round_s": [1.0, 2.0, 1.0, 2.0, 1.0]},
            {"case_key": "beta", "case": case("beta"), "provider": PLAIN_GAUSSIAN,
             "median_s": 1.0, "round_s": [1.0, 2.0, 1.0, 2.0, 1.0]},
            # Timed apart, in a slower phase: its median alone would read 0.5x.
            {"case_key": "rows", "case": case("rows"), "provider": "arrayloss numpy",
             "median_s": 0.5, "round_s": [0.5] * 5}]
    [target] = [target for target in evaluate_targets(rows, "cpu")
                if target["target"].startswith("GNLL beta forward")]
    assert target["value"] == 1.0 and target["spread"] == [1.0, 1.0]
    assert target["status"] == "met"
    # Without the interleaved provider (the GPU's runs): the rows case of the same run.
    [target] = [target for target in evaluate_targets(rows[::2], "cpu")
                if target["target"].startswith("GNLL beta forward")]
    assert target["value"] == 2.0 and target["status"] == "missed"  # twice plain's time


def test_linear_cross_entropy_targets_read_memory_and_the_chunked_rounds() -> None:
    """Issue 30: peak extra memory against PyTorch's unfused head, time against its chunked
    F.linear_cross_entropy round by round; only at the issue's sizes."""
    from benchmarks.cases import Case, build_cases, model_bytes, output_bytes
    from benchmarks.report import evaluate_targets

    [cpu] = [case for case in build_cases("cpu", ["linear_cross_entropy"], ["loss_and_grad"],
                                          ["mean"], ["float32"], quick=False)]
    assert (cpu.shape, cpu.variant) == ((4096, 32000), "d1024")
    assert output_bytes(cpu) == (4096 + 32000) * 1024 * 4
    assert model_bytes(cpu) == 2 * output_bytes(cpu) + 4096 * 8

    def rows_for(shape: list[int]) -> list[dict[str, Any]]:
        case = {"loss": "linear_cross_entropy", "op": "loss_and_grad", "reduction": "mean",
                "variant": "d1024", "dtype": "float32", "shape": shape,
                "elements": math.prod(shape)}
        outputs = (shape[0] + shape[1]) * 1024 * 4  # the gradients, returned by all
        runs = {"arrayloss numpy": (outputs + 100, [1.0, 1.0, 1.0]),
                "torch cpu": (outputs + 1000, [3.0] * 3),
                "torch chunked cpu": (outputs + 300, [1.0, 0.6, 1.2])}
        return [{"case_key": "k", "case": case, "provider": name, "median_s": 1.0,
                 "peak_extra_bytes": peak, "round_s": rounds, "model_bytes": 1}
                for name, (peak, rounds) in runs.items()]

    found = {target["metric"]: target for target in evaluate_targets(rows_for([4096, 32000]),
                                                                      "cpu")
             if target["target"].startswith("linear CE")}
    assert found["memory_ratio"]["value"] == 0.1 and found["memory_ratio"]["status"] == "met"
    speed = found["speedup_vs_chunked"]
    assert speed["value"] == 1.0 and speed["status"] == "inconclusive"  # 0.76-1.12 crosses 1/1.2
    assert not [target for target in evaluate_targets(rows_for([256, 4096]), "cpu")
                if target["target"].startswith("linear CE")]
    assert Case("linear_cross_entropy", "forward", "mean", "d64", "float32",
                (2, 3)).key.startswith("linear_cross_entropy/forward")


def test_allocator_verdicts_read_the_range_of_the_pairs() -> None:
    from benchmarks.allocator import allocator_verdict

    assert allocator_verdict([0.95, 1.02, 1.2]) == "met"
    assert allocator_verdict([1.3, 1.4, 1.6]) == "missed"
    assert allocator_verdict([0.5, 0.7]) == "missed"
    assert allocator_verdict([1.1, 1.3, 1.35]) == "inconclusive"
    assert allocator_verdict([0.7, 1.3]) == "inconclusive"  # on both sides, none inside


def test_model_bytes_follow_the_byte_models() -> None:
    n = 1 << 20
    forward = Case("gaussian_nll", "forward", "mean", "full", "float32", (n // 64, 64))
    assert model_bytes(forward) == 12 * n  # read input, target, var once
    fused = Case("gaussian_nll", "loss_and_grad", "mean", "full", "float32", (n // 64, 64))
    assert model_bytes(fused) == 20 * n  # plus grad_input and grad_var written once
    backward = Case("nll", "backward", "mean", "plain", "float32", (1000, 30))
    assert model_bytes(backward) == 1000 * 8 + 1000 * 30 * 4  # targets read, dense grad written


@pytest.mark.parametrize("argv", [["--providers", "nosuch"], ["--max-repeats", "0"],
                                  ["--max-elements", "0"], ["--budget", "0"],
                                  ["--warmup", "-1"], ["--save", "--out", "x"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_default_run_never_touches_the_committed_results(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    import benchmarks.__main__ as cli

    monkeypatch.setattr(cli, "ROOT", tmp_path)
    main(["--device", "cpu", "--quick", "--max-elements", "1024", "--budget", "0.01",
          "--max-repeats", "2", "--warmup", "0", "--no-progress", "--losses", "nll",
          "--ops", "forward", "--reductions", "mean"])
    written = [path.relative_to(tmp_path) for path in tmp_path.rglob("results.json")]
    assert written and all(path.parts[:2] == ("results", "_scratch") for path in written)


def test_arrayloss_through_torch_autograd_provider() -> None:
    """The GPU provider "arrayloss via torch" times the loss plus ``backward()``; on CPU
    tensors (the generic path) its gradients are PyTorch's and are cleared between calls."""
    torch = pytest.importorskip("torch")
    from benchmarks.cases import make_inputs
    from benchmarks.providers import TORCH_CPU, _arrayloss_autograd_call, convert

    case = Case("cross_entropy", "loss_and_grad", "mean", "plain", "float32", (64, 10))
    arrays = convert(TORCH_CPU, case, make_inputs(case))
    loss = _arrayloss_autograd_call(case, arrays)()
    want = torch.nn.functional.cross_entropy(arrays["input"], arrays["target"])
    torch.testing.assert_close(loss.detach(), want)
    assert arrays["input"].grad is None  # the timed call leaves no gradient behind


def test_torch_memory_profile_keeps_stderr_clean_and_working(
        capfd: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.timing import torch_cpu_peak

    x = torch.ones(1 << 16)
    peak = torch_cpu_peak(lambda: x * 2)
    assert peak >= x.numel() * x.element_size()  # the product's buffer, at least
    os.write(2, b"after the profile\n")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "after the profile" in err


def test_help_is_plain_text_with_every_option_and_its_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.__main__ import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for markup in ("``", "::", ":func:", ":data:", ".. "):  # reStructuredText
        assert markup not in out, markup
    assert "Time arrayloss against PyTorch" in out and "examples:" in out
    options = [action for action in build_parser()._actions if action.dest != "help"]
    assert len(options) >= 14
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings
        assert action.option_strings[0] in out


def _target_rows() -> list[dict[str, Any]]:
    """The measurements of a committed CPU record, with their derived figures."""
    from benchmarks.report import add_derived

    record = ROOT / "benchmarks" / "results" / "cpu-amd-epyc-2-cores" / "results.json"
    rows = json.loads(record.read_text())["results"]
    add_derived(rows, "cpu")
    return rows


def test_every_verdict_reads_the_same_way_as_its_number() -> None:
    """A target says which way its figure must go ("at least 1x", "at most 1.1x"), and a
    met (missed) verdict has its whole range on the right (wrong) side of that number."""
    from benchmarks.report import evaluate_targets

    targets = [target for target in evaluate_targets(_target_rows(), "cpu")
               if target["metric"] in ("speedup_vs_baseline", "time_vs_plain")]
    assert len(targets) >= 15
    for target in targets:
        worded = re.search(r"(at least|at most) (\d+(?:\.\d+)?)x", target["target"])
        assert worded, target["target"]
        bound = float(worded.group(2))
        assert bound == pytest.approx(target["threshold"], rel=0.01), target["target"]
        low, high = target["spread"]
        right_side = (low >= target["threshold"] if worded.group(1) == "at least"
                      else high <= target["threshold"])
        wrong_side = (high < target["threshold"] if worded.group(1) == "at least"
                      else low > target["threshold"])
        assert (target["status"] == "met") == right_side, target
        assert (target["status"] == "missed") == wrong_side, target
    # The Gaussian variants: a time ratio against a ceiling, the variant's time over plain's.
    variants = [t for t in targets if t["target"].startswith("GNLL ")]
    assert len(variants) == 4 and all(t["metric"] == "time_vs_plain" for t in variants)


def _noise_rows(ours_rounds: list[float], theirs_rounds: list[float]) -> list[dict[str, Any]]:
    case = {"loss": "nll", "op": "forward", "reduction": "mean", "variant": "plain",
            "dtype": "float32", "shape": [10000, 1000], "elements": 10_000_000}
    rows = []
    for provider, rounds in (("arrayloss numpy", ours_rounds), ("torch cpu", theirs_rounds)):
        ordered = sorted(rounds)
        rows.append({"case_key": "k", "case": case, "provider": provider, "model_bytes": 1e6,
                     "median_s": ordered[len(ordered) // 2], "round_s": rounds})
    return rows


def test_a_wide_spread_of_round_ratios_is_flagged_noisy() -> None:
    from benchmarks.report import add_derived, evaluate_targets, markdown

    # Median times 5.3 vs 4.8 ms, but one provider's slow rounds are the other's fast ones:
    # per-round ratios 0.41x at the median, with a range of more than 1.5x.
    ours = [11.7e-3, 11.7e-3, 11.7e-3, 5.3e-3, 5.3e-3, 5.3e-3, 2.0e-3]
    theirs = [4.8e-3, 4.8e-3, 4.8e-3, 2.0e-3, 9.0e-3, 9.0e-3, 1.0e-3]
    rows = _noise_rows(ours, theirs)
    add_derived(rows, "cpu")
    mine = rows[0]
    ratios = sorted(t / o for t, o in zip(theirs, ours, strict=True))
    assert mine["speedup_vs_baseline"] == pytest.approx(ratios[3])
    assert mine["speedup_vs_baseline"] == pytest.approx(0.41, abs=0.005)
    assert 4.8e-3 / 5.3e-3 == pytest.approx(0.906, abs=1e-3)  # what the medians give
    assert mine["noise"].startswith("noisy: ") and "the median times give 0.91x" in mine["noise"]
    targets = evaluate_targets(rows, "cpu")
    [judged] = [t for t in targets if t["target"].startswith("CPU NLL forward (10000, 1000)")]
    assert judged["noise"] == mine["noise"]
    meta = {"device_kind": "cpu", "device_name": "test", "date": "today", "versions": "-",
            "command": "-"}
    report = markdown(meta, rows, targets)
    assert "0.41x, noisy" in report and "; noisy: " in report
    # Steady rounds: no warning.
    quiet = _noise_rows([5.3e-3] * 7, [4.8e-3] * 7)
    add_derived(quiet, "cpu")
    assert "noise" not in quiet[0]
    assert "noisy" not in markdown(meta, quiet, evaluate_targets(quiet, "cpu")).split(
        "## nll forward")[1]


def test_plots_keep_unrelated_shapes_apart() -> None:
    """A loss over classes gets a panel per number of classes: cases of different C are
    never points of one line."""
    from benchmarks.report import plot_panels

    rows = _target_rows()
    panels = plot_panels(rows, "cross_entropy")
    assert {family for _, family in panels} == {(10,), (1000,), (32000,)}
    for (_, family), selected in panels.items():
        assert {row["case"]["shape"][1] for row in selected} == set(family)
    assert {family for _, family in plot_panels(rows, "gaussian_nll")} == {()}


@pytest.mark.parametrize(("module", "options"), [
    ("benchmarks.allocator", ["--budget", "--pairs", "--save"]),
    ("benchmarks.floor", ["--budget", "--rounds", "--save"]),
    ("benchmarks.out_of_core", ["--log2-elements", "--chunk-log2", "--save"])])
def test_the_other_commands_help_is_plain_text_with_defaults(
        module: str, options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    command = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and not re.search(r"::$", out, re.M) and ":func:" not in out
    assert out.count("(default: ") == len(options)
    assert all(option in out for option in options)


def test_floor_verdicts_read_the_slow_side_of_the_rounds() -> None:
    from benchmarks.floor import verdict

    assert verdict(0.9).startswith("within reach")  # a fifth of the rounds or more: faster
    assert verdict(1.2).startswith("out of reach on one thread")
    assert verdict(2.1).startswith("out of reach: the floor halved")


def test_floor_cases_do_the_work_they_claim() -> None:
    """Every case's calls run, and each floor computes what PyTorch's call needs, checked
    against PyTorch: NLL's values at the targets (times their weights) and the places of
    its gradient's nonzeros, cross-entropy's log-sum-exp of each row."""
    torch = pytest.importorskip("torch")
    from benchmarks import floor

    def nll_reference(n: int, c: int, weighted: bool) -> None:
        calls = floor._nll_case(n, c, weighted)
        calls["arrayloss"]()
        calls["PyTorch"]()
        # The same draws as the case's (its generator's seed and order).
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, generator=generator).log_softmax(1)
        t = torch.randint(0, c, (n,), generator=generator)
        w = torch.ones(c)
        if weighted:
            t[::7] = -100
            w = torch.rand(c, generator=generator)
        active = t != -100
        picked, grad = calls["NumPy floor"]()
        expected = (x[active, t[active]] * w[t[active]]).numpy()
        np.testing.assert_allclose(picked[active.numpy()], expected, rtol=1e-6)
        x.requires_grad_()
        torch.nn.functional.nll_loss(x, t, weight=w if weighted else None).backward()
        rows = active.numpy()
        assert np.array_equal(x.grad.numpy()[rows] != 0, grad.reshape(n, c)[rows] != 0)

    nll_reference(64, 10, False)
    nll_reference(70, 10, True)
    for _, build in floor.CASES:
        assert set(build()) == {"PyTorch", "arrayloss", "NumPy floor"}
    calls = floor._cross_entropy_case(8, 50)
    for call in calls.values():
        call()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=generator)
    np.testing.assert_allclose(np.log(calls["NumPy floor"]()),
                               torch.logsumexp(logits, 1).numpy(), rtol=1e-5)


def test_plain_text_drops_restructuredtext_markup() -> None:
    from benchmarks._cli import plain_text

    assert plain_text("Run ``python -m x``, see :func:`~a.b`::\n\n    x\n") == (
        "Run python -m x, see a.b:\n\n    x\n")
