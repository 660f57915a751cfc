"""What the benchmark commands' ``--help`` share: plain text, and every option's default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def plain_text(docstring: str | None) -> str:
    """A module docstring as ``--help`` shows it: without reStructuredText's markup
    (````literal````, a paragraph's closing ``::``, ``:role:`target```)."""
    text = docstring or ""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "")
    return re.sub(r"::$", ":", text, flags=re.M)


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its line breaks kept), every option's default after its
    help text."""


def torch_cpu_parser(prog: str, docstring: str | None, budget: float, budget_help: str
                     ) -> argparse.ArgumentParser:
    """The parser of a command that times NumPy against PyTorch on the CPU: ``--budget``
    and ``--save``; the command adds its own options."""
    parser = argparse.ArgumentParser(prog=prog, description=plain_text(docstring),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--budget", type=float, default=budget, help=budget_help)
    parser.add_argument("--save", action="store_true",
                        help="write the committed record benchmarks/results/<device>/")
    return parser


def check_budget_and_torch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A positive ``--budget``, and PyTorch installed (else nothing to compare with)."""
    if not args.budget > 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    try:
        import torch  # noqa: F401
    except ImportError:
        parser.error("PyTorch is not installed: nothing to compare")


def write_record(folder: Path, name: str, lines: list[str]) -> Path:
    """``lines`` as the Markdown file ``folder/name``, the folder made if need be."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path
