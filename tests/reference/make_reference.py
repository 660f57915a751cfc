"""Write PyTorch's answers for every parity case to ``torch_reference.npz``.

Run with PyTorch 2.13 installed, from the repository root::

    python tests/reference/make_reference.py

The file stores each case's inputs and PyTorch's loss and gradients, so the parity tests run
on machines without PyTorch.  It is regenerated only when the cases change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _cases import all_cases, torch_oracle  # noqa: E402


def main() -> None:
    import torch

    stored: dict[str, np.ndarray] = {}
    for case in all_cases():
        for key, value in case.arrays.items():
            stored[f"{case.name}/in/{key}"] = value
        for key, value in torch_oracle(case).items():
            stored[f"{case.name}/out/{key}"] = value
    np.savez_compressed(HERE / "torch_reference.npz", **stored)
    manifest = {"torch": torch.__version__, "numpy": np.__version__,
                "cases": len(all_cases())}
    (HERE / "torch_reference.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {manifest['cases']} cases with torch {torch.__version__}")


if __name__ == "__main__":
    main()
