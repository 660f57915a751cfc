"""``python -m arrayloss``: its arguments and what its table says."""

from __future__ import annotations

import re

import pytest

from arrayloss.__main__ import _cupy_unavailable, main


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
    assert "all results agree with the float64 reference" in out


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
