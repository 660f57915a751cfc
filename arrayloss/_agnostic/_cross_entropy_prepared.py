"""What every block of a cross-entropy call needs, computed once: the generic code
(:mod:`.cross_entropy`) prepares it and the NumPy blocks (:mod:`._cross_entropy_numpy`) read
it; a module of its own, so that neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Array = Any

__all__ = ["Prepared"]


@dataclass(slots=True)
class Prepared:
    """What every block needs, computed once per call: layout, targets, scaled upstream
    (never modified once built; not ``frozen``, whose construction costs microseconds)."""

    n: int
    s: int
    dtype: Any  # the compute dtype
    input3: Array  # input as (N, C, S), or None where that is no view (NumPy only)
    target3: Array  # (N, S) int64 indices, or (N, C, S) probabilities
    active: Array  # (N, S) bool, index targets only (else None)
    #: (N, S) w[t_n], 0 where inactive (a read-only broadcast 1 on NumPy where every
    #: target counts and none is weighted); index targets only (else None)
    target_weight: Array
    all_active: bool
    class_weight3: Array  # (1, C, 1) compute dtype, or None without weights
    class_weight_sum: float | Array  # sum_c w[c] (C without weights)
    upstream: float | Array  # G: a number, a 0-d array, or (N, S)
    divisor: float | Array | None  # what 'mean' divides by
