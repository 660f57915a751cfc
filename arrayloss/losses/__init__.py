"""The elementwise losses: one declaration module each (see :mod:`arrayloss._elementwise`).

Every module of this package is one loss: it declares ``SPEC`` and names its public
functions and class in ``__all__``.  They are found here, so adding a loss is adding its
module (and its rows in the tests' case table): nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .._elementwise.spec import ElementwiseLoss

#: Every elementwise loss's declaration, in module-name order.
SPECS: list[ElementwiseLoss] = []
__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    if _info.name.startswith("_"):
        continue
    _module: Any = importlib.import_module(f"{__name__}.{_info.name}")
    SPECS.append(_module.SPEC)
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
