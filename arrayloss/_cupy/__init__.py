"""Fused CUDA kernels for CuPy arrays, imported only when CuPy arrays arrive.

``kernels.cuh`` holds the per-element math and ``_kernels`` what every kernel shares (the
header, the conventions, the registry of kernel factories).  Each loss's module
(``gaussian_nll``, ``nll``, ``cross_entropy``) holds its kernels and the backend the
dispatcher calls with a validated call object; ``reduce`` the deterministic two-pass
reduction and its kernels.
"""
