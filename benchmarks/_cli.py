"""What the benchmark commands' ``--help`` share: plain text, and every option's default."""

from __future__ import annotations

import argparse
import re


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
