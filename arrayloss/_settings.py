"""Settings that several layers read: kept here, below all of them, so none imports another
for them."""

from __future__ import annotations

from contextvars import ContextVar

#: Whether CuPy arrays and torch tensors take arrayloss's fused paths (``fused_kernels``).
use_fused: ContextVar[bool] = ContextVar("arrayloss_use_fused", default=True)
