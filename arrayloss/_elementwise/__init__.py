"""The elementwise-loss layer: a loss is declared once (:mod:`.spec`), and the shared layers
make its public functions and class (:mod:`.public`), its validation (:mod:`.call`), its
generic and NumPy-blocked code (:mod:`.generic`), its CUDA kernels
(:mod:`arrayloss._cupy.elementwise`) and its Dask adapter (:mod:`.dask`)."""

from .public import Defined, define
from .spec import Argument, ElementwiseLoss, Option, RangeCheck

__all__ = ["Argument", "Defined", "ElementwiseLoss", "Option", "RangeCheck", "define"]
