"""Fused CUDA kernels for CuPy arrays, imported only when CuPy arrays arrive.

``kernels.cuh`` holds the per-element math, ``_kernels`` the CuPy kernel objects,
``reduce`` the deterministic two-pass reduction, and ``gaussian_nll`` / ``nll`` the backends
the dispatcher calls with a validated call object.
"""
