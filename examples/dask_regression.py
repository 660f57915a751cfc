"""Data-parallel training over Dask chunks: the heteroscedastic regressor, one gradient per chunk.

The data (x, y) are Dask arrays split into row chunks; the parameters are small NumPy arrays.
Each step builds one lazy graph: per chunk, the network's forward pass, arrayloss's
``gaussian_nll_loss_and_grad`` on the Dask arrays (fused per chunk, its 'mean' over *all*
rows), and the network's hand-written backward pass, whose parameter gradients are then summed
over the chunks by a tree reduction.  ``dask.compute`` runs it where Dask is told: threads on
this machine by default, a two-process ``LocalCluster`` with ``--workers 2``, or an existing
cluster with ``--address tcp://scheduler:8786``: the same code in each case.

At start the data-parallel gradient is checked against the in-memory NumPy gradient.

    python examples/dask_regression.py --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

import dask
import dask.array as da
import numpy as np
from _training import Params, print_summary, train_adam
from heteroscedastic_regression import backward, evaluate, forward, init, make_data

import arrayloss as al

NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")


def _flatten(grads: Params) -> np.ndarray:
    return np.concatenate([np.ravel(grads[name]) for name in NAMES])


def _unflatten(vector: np.ndarray, like: Params) -> Params:
    out, start = {}, 0
    for name in NAMES:
        size = like[name].size
        out[name] = vector[start:start + size].reshape(like[name].shape)
        start += size
    return out


def loss_and_grads(params: Params, x: da.Array, y: da.Array) -> tuple[float, Params]:
    """The full-batch loss and parameter gradients, computed chunk by chunk."""
    def predict(block: np.ndarray, which: int) -> np.ndarray:
        return forward(params, block, np)[which]

    mean = x.map_blocks(predict, 0, drop_axis=1, dtype=x.dtype)
    var = x.map_blocks(predict, 1, drop_axis=1, dtype=x.dtype)
    loss, (grad_mean, _, grad_var) = al.gaussian_nll_loss_and_grad(mean, y, var,
                                                                   wrt=("input", "var"))

    def chunk_gradient(block: np.ndarray, g_mean: np.ndarray, g_var: np.ndarray) -> np.ndarray:
        _, _, cache = forward(params, block, np)
        grads = backward(params, cache, g_mean[:, 0], g_var[:, 0], np)
        return _flatten(grads)[None, :]

    size = sum(p.size for p in params.values())
    per_chunk = da.map_blocks(chunk_gradient, x, grad_mean[:, None], grad_var[:, None],
                              chunks=((1,) * x.numblocks[0], (size,)), dtype=x.dtype)
    loss_value, vector = dask.compute(loss, per_chunk.sum(axis=0))
    return float(loss_value), _unflatten(vector, params)


def gradient_check(x: np.ndarray, y: np.ndarray, chunk: int) -> float:
    """The largest relative difference between the Dask and the in-memory gradients."""
    params = init(np, 48, seed=3)
    loss, grads = loss_and_grads(params, da.from_array(x, chunks=(chunk, 1)),
                                 da.from_array(y, chunks=chunk))
    mean, var, cache = forward(params, x, np)
    want_loss, (grad_mean, _, grad_var) = al.gaussian_nll_loss_and_grad(
        mean, y, var, wrt=("input", "var"))
    want = backward(params, cache, grad_mean, grad_var, np)
    errors = [abs(loss - float(want_loss)) / abs(float(want_loss))]
    errors += [float(np.max(np.abs(grads[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-12))
               for k in NAMES]
    return max(errors)


@contextlib.contextmanager
def scheduler(workers: int, address: str | None) -> Iterator[str]:
    """Where Dask runs the graphs: an existing cluster, a local one, or threads."""
    if address or workers:
        import distributed

        if address:
            with distributed.Client(address):
                yield f"cluster at {address}"
            return
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster):
            yield f"LocalCluster, {workers} worker processes"
        return
    with dask.config.set(scheduler="threads"):
        yield "threads of this process"


LABELS = {
    "gradient_check_error": "Dask gradient vs in-memory gradient, max relative difference",
    "first_loss": "training loss, first step",
    "final_loss": "training loss, last step",
    "test_nll": "held-out Gaussian NLL",
    "constant_variance_nll": "held-out NLL with the best single variance",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=1024, help="rows per Dask chunk")
    parser.add_argument("--workers", type=int, default=0,
                        help="start a LocalCluster with this many processes (0: threads)")
    parser.add_argument("--address", help="an existing Dask scheduler to connect to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x, y = make_data(np, args.rows, args.seed)
    with scheduler(args.workers, args.address) as where:
        error = gradient_check(x, y, args.chunk)
        assert error < 1e-10, "the data-parallel gradient disagrees with the in-memory one"
        dx, dy = da.from_array(x, chunks=(args.chunk, 1)), da.from_array(y, chunks=args.chunk)
        params, history = train_adam(lambda p: loss_and_grads(p, dx, dy), init(np, 48, 1),
                                     np, args.steps, rate=3e-3)
    metrics = {"gradient_check_error": error, "first_loss": history[0],
               "final_loss": history[-1], **evaluate(params, np, args.seed)}
    metrics.pop("std_correlation")
    print_summary(f"heteroscedastic regression over {dx.numblocks[0]} Dask chunks ({where})",
                  metrics, LABELS)
    return metrics


def learned(metrics: dict[str, float]) -> bool:
    """Whether the model learned the noise: better than one variance for every x."""
    return (metrics["test_nll"] < metrics["constant_variance_nll"] - 0.05
            and metrics["final_loss"] < metrics["first_loss"])


if __name__ == "__main__":
    sys.exit(0 if learned(main()) else 1)
