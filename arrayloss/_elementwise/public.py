"""An elementwise loss's public functions and loss object, made from its declaration.

:func:`define` gives a declaration its ``<loss>``, ``<loss>_backward`` and
``<loss>_and_grad`` (with real signatures and numpydoc docstrings built from the
declaration's pieces) and its ``torch.nn``-style class, and registers its backends.  Each
function runs the sequence every loss shares: validate once (:mod:`.call`), hand torch
tensors that record autograd and JAX tracers to :mod:`arrayloss._autograd`, else call the
backend of the arrays' library (:mod:`arrayloss._dispatch`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from .. import _autograd, _registry, _validation
from .._dispatch import backend
from .._torch_cpu import numpy_first
from . import docs
from .call import ElementwiseCall, check_options, check_wrt, make_call
from .generic import ElementwiseBackend
from .spec import ElementwiseLoss
from .weighted_mean import with_weighted_mean

__all__ = ["Defined", "define"]

Array = Any
_P = inspect.Parameter


class Defined(NamedTuple):
    """What :func:`define` makes of a declaration: ``loss, loss_backward, loss_and_grad,
    LossClass = define(SPEC)``."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    loss_and_grad: Callable[..., Any]
    module: type


def _parameters(spec: ElementwiseLoss, *, upstream: bool, wrt: bool, scalar: bool
                ) -> list[inspect.Parameter]:
    names = [_P("grad_output", _P.POSITIONAL_OR_KEYWORD)] if upstream else []
    for argument in spec.arguments:
        kind = _P.KEYWORD_ONLY if argument.keyword else _P.POSITIONAL_OR_KEYWORD
        default = None if argument.optional else _P.empty
        names.append(_P(argument.name, kind, default=default))
    for option in spec.options:
        names.append(_P(option.name, _P.KEYWORD_ONLY, default=option.default))
    names.append(_P("reduction", _P.KEYWORD_ONLY, default="mean"))
    if wrt:
        names.append(_P("wrt", _P.KEYWORD_ONLY, default=spec.gradient_names))
    names.append(_P("validate", _P.KEYWORD_ONLY, default=True))
    del scalar
    return names


def _split(spec: ElementwiseLoss, values: dict[str, Any]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays = {argument.name: values[argument.name] for argument in spec.arguments}
    options = {option.name: values[option.name] for option in spec.options}
    return arrays, options


def define(spec: ElementwiseLoss) -> Defined:
    """The public functions and the loss class of ``spec``; registers its backends."""
    generic = with_weighted_mean(spec, ElementwiseBackend(spec))

    @functools.cache
    def cupy_backend() -> Any:
        from .._cupy.elementwise import cupy_backend

        return with_weighted_mean(spec, cupy_backend(spec))

    @functools.cache
    def dask_backend() -> Any:
        from .dask import DaskBackend

        return with_weighted_mean(spec, DaskBackend(spec, functions))

    _registry.register(spec.name, _registry.Backends(generic=lambda: generic,
                                                     cupy=cupy_backend, dask=dask_backend))
    name = spec.name

    forward_signature = inspect.Signature(_parameters(spec, upstream=False, wrt=False,
                                                      scalar=False))
    backward_signature = inspect.Signature(_parameters(spec, upstream=True, wrt=True,
                                                       scalar=False))
    and_grad_signature = inspect.Signature(_parameters(spec, upstream=False, wrt=True,
                                                       scalar=True))

    def run_forward(call: ElementwiseCall) -> Array:
        return backend(call.xp, name).forward(call)

    def run_backward(call: ElementwiseCall, grad_output: Any,
                     wanted: frozenset[str]) -> dict[str, Array | None]:
        upstream = _validation.check_grad_output(grad_output, call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        # The bridges ask for every floating argument; weights have no gradient (None).
        asked = tuple(name for name in wanted if name in spec.gradient_names)
        grads = backend(call.xp, name).backward(call, upstream, check_wrt(spec, asked, call))
        return dict(zip(spec.gradient_names, grads, strict=True))

    def run_loss_and_grad(call: ElementwiseCall, wanted: frozenset[str]
                          ) -> tuple[Array, dict[str, Array | None]] | None:
        asked = tuple(name for name in wanted if name in spec.gradient_names)
        if not asked:  # a weight alone requires grad: it has none
            return None
        result, grads = backend(call.xp, name).loss_and_grad(call, check_wrt(spec, asked, call))
        return result, _autograd.wanted_gradients(spec.gradient_names, grads, wanted)

    def loss(values: dict[str, Any]) -> Array:
        arrays, options = _split(spec, values)
        call = make_call(spec, arrays, reduction=values["reduction"],
                         validate=values["validate"], options=options)
        if _autograd.recording(call.xp, tuple(call.arrays.values())):
            reduction, validate = values["reduction"], values["validate"]
            absent = {key: value for key, value in arrays.items() if key not in call.arrays}

            def remake(named: dict[str, Array]) -> ElementwiseCall:
                return make_call(spec, {**absent, **named}, reduction=reduction,
                                 validate=validate, options=options, warn=False)

            differentiable = _autograd.Differentiable(
                arrays=dict(call.arrays), make_call=remake, forward=run_forward,
                backward=run_backward, loss_and_grad=run_loss_and_grad)
            return _autograd.loss(differentiable, call)
        return run_forward(call)

    def loss_backward(values: dict[str, Any]) -> tuple[Array | None, ...]:
        arrays, options = _split(spec, values)
        call = make_call(spec, arrays, reduction=values["reduction"],
                         validate=values["validate"], options=options)
        wanted = check_wrt(spec, values["wrt"], call)
        upstream = _validation.check_grad_output(values["grad_output"], call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        with _autograd.not_recorded(call.xp):
            return tuple(backend(call.xp, name).backward(call, upstream, wanted))

    def loss_and_grad(values: dict[str, Any]) -> tuple[Array, tuple[Array | None, ...]]:
        _validation.require_scalar_loss(values["reduction"], f"{name}_and_grad", name)
        arrays, options = _split(spec, values)
        call = make_call(spec, arrays, reduction=values["reduction"],
                         validate=values["validate"], options=options)
        wanted = check_wrt(spec, values["wrt"], call)
        with _autograd.not_recorded(call.xp):
            result, grads = backend(call.xp, name).loss_and_grad(call, wanted)
            return result, tuple(grads)

    # Forwards record autograd; backward and and-grad never do (numpy_first's `records`).
    made = [numpy_first(records=suffix == "")(
                _with_signature(implementation, name + suffix, signature, doc))
            for implementation, suffix, signature, doc in (
                (loss, "", forward_signature, docs.forward_doc(spec)),
                (loss_backward, "_backward", backward_signature, docs.backward_doc(spec)),
                (loss_and_grad, "_and_grad", and_grad_signature, docs.and_grad_doc(spec)))]
    functions = Defined(made[0], made[1], made[2], type)
    functions = Defined(made[0], made[1], made[2], _module_class(spec, functions))
    return functions


def _with_signature(implementation: Callable[[dict[str, Any]], Any], name: str,
                    signature: inspect.Signature, doc: str) -> Callable[..., Any]:
    """A function of this ``signature`` that hands its arguments, by name, to
    ``implementation``: real parameters (``help``, IDEs, Python's own errors for a wrong or
    missing argument) at the cost of a plain call, where ``Signature.bind`` costs
    microseconds on every call."""
    defaults = {f"_default_{position}": parameter.default
                for position, parameter in enumerate(signature.parameters.values())}
    listed, keyword_only = [], False
    for position, parameter in enumerate(signature.parameters.values()):
        if parameter.kind is _P.KEYWORD_ONLY and not keyword_only:
            listed.append("*")
            keyword_only = True
        default = "" if parameter.default is _P.empty else f"=_default_{position}"
        listed.append(parameter.name + default)
    source = (f"def {name}({', '.join(listed)}):\n"
              f"    return _implementation(locals())\n")
    # _ARRAYLOSS_FRAME: the function's frames are arrayloss's (a warning skips them, to the
    # caller's line); not __name__, through which TorchDynamo would look its globals up.
    namespace: dict[str, Any] = {"_implementation": implementation, "_ARRAYLOSS_FRAME": True,
                                 **defaults}
    exec(source, namespace)  # the source is made here, from the parameters' names
    function = namespace[name]
    function.__doc__, function.__module__, function.__qualname__ = doc, "arrayloss", name
    return cast(Callable[..., Any], function)


class ElementwiseModule:
    """The base of every elementwise loss object: its options, held once and checked when
    it is built; calls, ``backward`` and ``loss_and_grad`` pass them on."""

    _spec: ElementwiseLoss
    _functions: Defined

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        signature = _module_signature(self._spec)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        reduction, validate, options = check_options(
            self._spec, values.pop("reduction"), values.pop("validate"),
            {option.name: values.pop(option.name) for option in self._spec.options})
        self.reduction, self.validate = reduction, validate
        self._held = values  # the weights: arrays, not checked until a call meets them
        for key, value in {**values, **options}.items():
            setattr(self, key, value)
        self._options = options

    def _keywords(self) -> dict[str, Any]:
        return {**self._held, **self._options, "reduction": self.reduction,
                "validate": self.validate}

    def __call__(self, input: Array, target: Array) -> Array:
        return self._functions.forward(input, target, **self._keywords())

    def backward(self, grad_output: Array | float, input: Array, target: Array, *,
                 wrt: Any = None) -> tuple[Array | None, ...]:
        keywords = self._keywords()
        if wrt is not None:
            keywords["wrt"] = wrt
        return self._functions.backward(grad_output, input, target, **keywords)

    def loss_and_grad(self, input: Array, target: Array, *,
                      wrt: Any = None) -> tuple[Array, tuple[Array | None, ...]]:
        keywords = self._keywords()
        if wrt is not None:
            keywords["wrt"] = wrt
        return self._functions.loss_and_grad(input, target, **keywords)

    def __repr__(self) -> str:
        held = [f"{key}=..." for key, value in self._held.items() if value is not None]
        options = [f"{key}={value!r}" for key, value in self._options.items()]
        listed = ", ".join([*held, *options, f"reduction={self.reduction!r}",
                            f"validate={self.validate}"])
        return f"{type(self).__name__}({listed})"


def _module_signature(spec: ElementwiseLoss) -> inspect.Signature:
    parameters = []
    for argument in spec.arguments:
        if argument.optional and argument.held:
            kind = _P.KEYWORD_ONLY if argument.keyword else _P.POSITIONAL_OR_KEYWORD
            parameters.append(_P(argument.name, kind, default=None))
    parameters += [_P(option.name, _P.KEYWORD_ONLY, default=option.default)
                   for option in spec.options]
    parameters += [_P("reduction", _P.KEYWORD_ONLY, default="mean"),
                   _P("validate", _P.KEYWORD_ONLY, default=True)]
    return inspect.Signature(parameters)


def _module_class(spec: ElementwiseLoss, functions: Defined) -> type:
    cls = type(spec.module, (ElementwiseModule,), {
        "_spec": spec, "_functions": functions, "__doc__": docs.module_doc(spec),
        "__module__": "arrayloss", "__qualname__": spec.module,
    })
    cls.__signature__ = _module_signature(spec)  # type: ignore[attr-defined]
    return cls
