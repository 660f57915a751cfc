"""Reached only by ``python -m arrayloss`` run from the folder that contains this checkout.

There, Python imports the checkout's folder (named ``arrayloss``, without ``__init__.py``) as
an empty namespace package instead of the package inside it, and runs this file as its
``__main__``.  It says so (``arrayloss/__main__.py`` says the same when an editable install
finds it) and exits with status 1.  It is not part of the installed package.
"""

import sys
from pathlib import Path

sys.exit(f"'import arrayloss' found the folder {Path(__file__).absolute().parent}, not the "
         "arrayloss package: the checkout, seen from the folder that contains it.  Run from "
         "inside the checkout (cd arrayloss), or from any other folder once it is installed "
         "(pip install -e arrayloss).")
