"""The numpydoc docstrings of an elementwise loss's public functions and class, assembled
from the pieces its declaration gives (summary, formula, arguments, options, notes)."""

from __future__ import annotations

import textwrap

from .spec import ElementwiseLoss

__all__ = ["and_grad_doc", "api_rst", "backward_doc", "forward_doc", "module_doc"]

_REDUCTION = {
    "none": "``'none'`` returns the per-element losses",
    "mean": "``'mean'`` averages them over the broadcast shape",
    "sum": "``'sum'`` adds them",
    "batchmean": "``'batchmean'`` adds them and divides by the batch size ``input.shape[0]``",
}


def _indent(text: str, spaces: int = 4) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * spaces)


def _reductions(spec: ElementwiseLoss) -> str:
    names = ", ".join(repr(name) for name in spec.reductions)
    described = dict(_REDUCTION)
    if spec.mean_over:
        described["mean"] = (f"``'mean'`` divides their sum by the sum of ``{spec.mean_over}`` "
                             "where it is given, else averages them over the broadcast shape")
    listed = "; ".join(described[name] for name in spec.reductions)
    return f"reduction : {{{names}}}, default 'mean'\n    {listed}."


def _result_dtype(spec: ElementwiseLoss) -> str:
    """Which arguments the result's dtype comes from, in words."""
    cast = [a.name for a in spec.arguments if not a.promotes]
    excluded = "integer arrays" + (f" and ``{'``, ``'.join(cast)}``" if cast else "")
    return f"the floating result type of the inputs ({excluded}\n    do not take part)"


def _argument_lines(spec: ElementwiseLoss) -> str:
    lines = []
    for argument in spec.arguments:
        kind = "array or None" if argument.optional else "array"
        default = ", default None" if argument.optional else ""
        lines.append(f"{argument.name} : {kind}{default}\n{_indent(argument.doc)}")
    return "\n".join(lines)


def _option_lines(spec: ElementwiseLoss) -> str:
    lines = []
    for option in spec.options:
        kind = "bool" if option.is_flag else "float"
        lines.append(f"{option.name} : {kind}, default {option.default!r}\n"
                     f"{_indent(option.doc)}")
    return "\n".join(lines)


def _validate(spec: ElementwiseLoss) -> str:
    if not spec.checks:
        return ("validate : bool, default True\n    Accepted for a uniform signature: this "
                "loss has no value checks.")
    ranges = "; ".join(f"``{check.argument}`` in [{check.low:g}, {check.high:g}]"
                       for check in spec.checks)
    return ("validate : bool, default True\n    Check the values: " + ranges + ".  On CuPy "
            "the check is fused into the kernel (one small device-to-host read);\n    "
            "``validate=False`` skips it and makes the call free of host synchronisation.")


def _names(spec: ElementwiseLoss) -> str:
    return ", ".join(a.name for a in spec.arguments)


def _options_names(spec: ElementwiseLoss) -> str:
    return ", ".join([*(o.name for o in spec.options), "validate"])


def forward_doc(spec: ElementwiseLoss) -> str:
    pytorch = (f"  The semantics are PyTorch's :func:`{spec.pytorch}`." if spec.pytorch else "")
    notes = ("float16 and bfloat16 inputs are computed and accumulated in float32 and rounded "
             "once at the end; float64 stays float64.  An empty input gives NaN for "
             "``'mean'`` and 0 for ``'sum'``.  On NumPy, large inputs run in cache-sized "
             "blocks in worker threads, with no temporary of the input's size; CuPy arrays "
             "run one fused kernel.")
    if spec.notes:
        notes = textwrap.dedent(spec.notes).strip() + "\n\n" + notes
    sections = [
        spec.summary,
        "",
        "Per element,\n\n.. math::\n\n" + _indent(spec.formula) + "\n\nthen reduced by "
        "``reduction``." + pytorch,
        "",
        "Parameters\n----------\n" + _argument_lines(spec)
        + ("\n" + _option_lines(spec) if spec.options else "") + "\n" + _reductions(spec)
        + "\n" + _validate(spec),
        "",
        "Returns\n-------\nloss : array\n    A 0-d array for a reduced loss; the broadcast "
        "shape of the arguments for ``'none'``.\n    Same library and device as ``input``, "
        + _result_dtype(spec) + ".",
        "",
        "Raises\n------\nValueError\n    A bad option or ``reduction``, shapes that do not "
        "fit" + (", values out of range" if spec.checks else "") + ".\nTypeError\n    A "
        "wrong dtype, a non-array argument, or arrays from different libraries.",
        "",
        f"See Also\n--------\n{spec.name}_backward : The gradients of this loss.\n"
        f"{spec.name}_and_grad : The loss and its gradients together.\n"
        f"{spec.module} : The same loss with its options held by an object.",
        "",
        "Notes\n-----\n" + notes,
    ]
    if spec.example:
        sections += ["", "Examples\n--------\n" + textwrap.dedent(spec.example).strip()]
    return "\n".join(sections) + "\n"


def backward_doc(spec: ElementwiseLoss) -> str:
    grads = ", ".join(f"grad_{name}" for name in spec.gradient_names)
    wrt = ", ".join(repr(name) for name in spec.gradient_names)
    return "\n".join([
        f"Gradients of :func:`{spec.name}` with respect to "
        + " and ".join(f"``{n}``" for n in spec.gradient_names) + ".",
        "",
        "With :math:`G` the upstream gradient reaching each loss element (``grad_output`` for "
        "``'none'`` and\n``'sum'``, ``grad_output`` over the divisor of ``'mean'``: "
        + (f"the sum of ``{spec.mean_over}`` where it is\ngiven, else " if spec.mean_over
           else "") + "the number of loss elements"
        + ("; over that of the other reductions" if spec.extra_reductions else "")
        + "):\n\n"
        ".. math::\n\n" + _indent(spec.gradient_formula)
        + "\n\neach summed back over the dimensions its argument was broadcast along.",
        "",
        "Parameters\n----------\ngrad_output : array or real number\n    The gradient of the "
        "objective with respect to the loss: a number or a 0-d array for a\n    reduced loss, "
        "an array of the loss's shape for ``'none'``.\n"
        f"{_names(spec)}, {_options_names(spec)}, reduction\n    As in :func:`{spec.name}`.\n"
        f"wrt : str or sequence of str, default ({wrt})\n    The gradients to compute; the "
        "others come back as ``None`` and cost nothing.",
        "",
        f"Returns\n-------\n{grads} : array or None\n    Each with its argument's shape and "
        "dtype; ``None`` where not asked for, or for an\n    integer argument, which has no "
        "gradient.  Weights are not differentiated.",
        "",
        f"See Also\n--------\n{spec.name}_and_grad : Loss and gradients together.",
    ]) + "\n"


def and_grad_doc(spec: ElementwiseLoss) -> str:
    grads = ", ".join(f"grad_{name}" for name in spec.gradient_names)
    return "\n".join([
        f"The reduced :func:`{spec.name}` and its gradients, computed together.",
        "",
        f"Equivalent to :func:`{spec.name}` followed by :func:`{spec.name}_backward` with "
        "``grad_output=1``,\nsharing the intermediates; on CuPy one fused pass over memory.",
        "",
        f"Parameters\n----------\n{_names(spec)}, {_options_names(spec)}\n    As in "
        f":func:`{spec.name}`.\nreduction : str, default 'mean'\n    Any reduction of "
        f":func:`{spec.name}` but ``'none'``: the loss must be a scalar.\n"
        f"wrt : str or sequence of str\n    As in :func:`{spec.name}_backward`.",
        "",
        f"Returns\n-------\nloss : array\n    0-d.\ngrads : tuple of (array or None)\n    "
        f"``({grads})``, as :func:`{spec.name}_backward` returns them.",
    ]) + "\n"


def module_doc(spec: ElementwiseLoss) -> str:
    held = ([a.name for a in spec.arguments if a.optional and a.held]
            + [o.name for o in spec.options])
    listed = ", ".join([*held, "reduction", "validate"])
    return "\n".join([
        f"{spec.summary.rstrip('.')}, with its options held by the object.",
        "",
        f"``loss(input, target)`` is :func:`{spec.name}`, ``loss.backward(grad_output, input, "
        f"target)`` is\n:func:`{spec.name}_backward` and ``loss.loss_and_grad(input, target)`` "
        f"is :func:`{spec.name}_and_grad`,\nall with the options given here ({listed}), "
        "which are checked when the object is built.",
    ]) + "\n"


def api_rst(specs: list[ElementwiseLoss]) -> str:
    """The API reference's sections of the elementwise losses (``docs/api.rst`` includes it):
    one autosummary per family, so a new loss appears without an edit there."""
    families: dict[str, list[ElementwiseLoss]] = {}
    for spec in specs:
        families.setdefault(spec.family or spec.name, []).append(spec)
    lines = [".. currentmodule:: arrayloss", ""]
    for family, members in families.items():
        lines += [family, "-" * len(family), "", ".. autosummary::", "   :toctree: generated", ""]
        for spec in members:
            lines += [f"   {spec.name}", f"   {spec.name}_backward", f"   {spec.name}_and_grad"]
        lines += [f"   {spec.module}" for spec in members]
        lines.append("")
    return "\n".join(lines) + "\n"
