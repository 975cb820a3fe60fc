"""The pass interface shared by GTT's native transforms, graphopt's passes and plugins.

A pass has a unique ``name``, a one-line ``description``, typed ``options`` that
are validated when the pass is built, and a :meth:`Pass.run` that takes a
:class:`~graphopt.model.Model` and returns a :class:`PassResult` (the new model,
whether anything changed, and the pass's own counters such as ``folded=52``).

Two ways to write one::

    class StripFoo(Pass):
        name = "strip_foo"
        description = "Remove Foo ops."
        options = {"keep": Option(list, default=[], help="node names to keep")}

        def run(self, model):
            ...
            return PassResult(model.with_graph(gd), modified=True, counters={"removed": n})

    @function_pass(name="strip_bar", description="Remove Bar ops.")
    def strip_bar(model, *, keep: list[str] = ()):
        ...
        return gd   # a GraphDef, a Model or a PassResult are all accepted

Options arrive as Python values when a pass is built in code, or as strings from
a GTT-style transform string (``strip_foo(keep=a, keep=b)``); :class:`Option`
converts strings to the declared type, so a pass never parses text itself.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graphopt.errors import UsageError
from graphopt.model import Model

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Option:
    """A typed pass option. ``type`` is one of bool, int, float, str or list (of str).

    A ``list`` option collects repeated keys (``op=Identity, op=CheckNumerics``).
    Values are never split on commas: GTT passes lists as repeated keys, and a
    comma may be part of a value (``shape="1,224,224,3"``).
    """

    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    required: bool = False

    def convert(self, raw: Any, *, pass_name: str, key: str) -> Any:
        """Turn a raw value (string from a transform string, or a Python value) into the option's type."""
        where = f"pass {pass_name}, option {key}"
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        if self.type is list:
            items = [str(v) for v in values]
            if self.choices is not None:
                for v in items:
                    self._check_choice(v, where)
            return items
        if len(values) != 1:
            raise UsageError(f"option '{key}' was given {len(values)} times but takes one value", where=where,
                             hint=f"give '{key}=' once")
        value = values[0]
        out: Any
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in _TRUE:
                    out = True
                elif str(value).lower() in _FALSE:
                    out = False
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool):
                    raise ValueError
                out = int(value)
            elif self.type is float:
                out = float(value)
            else:
                out = self.type(value)
        except (TypeError, ValueError):
            raise UsageError(f"option '{key}' expects {self.type.__name__}, got {value!r}", where=where,
                             hint=self.help or None) from None
        self._check_choice(out, where)
        return out

    def _check_choice(self, value: Any, where: str) -> None:
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{value!r} is not one of {', '.join(map(str, self.choices))}", where=where)


@dataclass
class PassResult:
    """What a pass returns: the model after it, whether it changed, and its counters.

    ``explanations`` (passes that can say why they did not fire, ``Pass.explains``):
    one :class:`graphopt.rewrite.Explanation` per rule and candidate site.
    """

    model: Model
    modified: bool
    counters: dict[str, int | float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explanations: list[Any] = field(default_factory=list)


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement :meth:`run`.

    ``lossy`` passes (fp16/int8 weights) change outputs on purpose; they declare a
    ``tolerance`` (max relative difference) that verification uses instead of
    the lossless default. ``origin`` is filled in by the registry (``native``,
    ``builtin`` or the plugin distribution) and is not set by authors.

    ``edits_input`` says whether :meth:`run` may change the model it is given:
    the pipeline then hands it a private copy (a rollback keeps the original).
    A pass that copies what it changes itself, or builds a new GraphDef, sets it
    to False and saves a whole copy of the graph per run (100 MB on ResNet50).

    ``applies_to_functions`` says whether the pass also runs inside function
    bodies (``If``/``While`` branches, called functions): the pipeline then runs
    :meth:`run` on the main graph and again on every function the main graph
    calls, each body given as a Model whose signature is the function's
    arguments and returns (:mod:`graphopt.graph.functions`). A pass that only
    rewrites nodes locally can set it to True as it is; one that reasons about
    the whole program (signatures, weights, devices) leaves it False.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    lossy: ClassVar[bool] = False
    tolerance: ClassVar[float | None] = None
    edits_input: ClassVar[bool] = True
    applies_to_functions: ClassVar[bool] = False
    # Whether run() returns explanations (per candidate site: fired or why not); `graphopt explain` needs it.
    explains: ClassVar[bool] = False
    origin: Any = None  # set on instances by Registry.create

    def __init__(self, **options: Any) -> None:
        # GTT gives every transform ignore_errors; here it means "on failure, roll back and go on".
        self.ignore_errors = Option(bool).convert(options.pop("ignore_errors", False), pass_name=self.name,
                                                  key="ignore_errors")
        self.config = self.validate_options(options)

    @classmethod
    def validate_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Check names and types of options; fill defaults. Raises :class:`UsageError`."""
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            # GTT itself ignores unknown arguments silently; a typo must not turn a pass into a no-op.
            known = ", ".join(sorted(cls.options)) or "none"
            close = difflib.get_close_matches(unknown[0], list(cls.options) + ["ignore_errors"], n=1, cutoff=0.6)
            guess = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(f"unknown option {', '.join(repr(u) for u in unknown)} for pass '{cls.name}'",
                             where=f"pass {cls.name}",
                             hint=f"{guess}options of {cls.name}: {known} (and ignore_errors)")
        out: dict[str, Any] = {}
        for key, opt in cls.options.items():
            if key in given:
                out[key] = opt.convert(given[key], pass_name=cls.name, key=key)
            elif opt.required:
                raise UsageError(f"option '{key}' is required", where=f"pass {cls.name}", hint=opt.help or None)
            else:
                out[key] = list(opt.default) if isinstance(opt.default, (list, tuple)) else opt.default
        return out

    def run(self, model: Model) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: Model) -> PassResult:
        return self.run(model)

    @property
    def spec(self) -> str:
        """This pass as GTT transform-string text, e.g. ``remove_nodes(op=Identity, op=CheckNumerics)``."""
        from graphopt.passes.transform_string import format_step

        args: list[tuple[str, str]] = []
        for key, value in self.config.items():
            opt = self.options[key]
            if value is None or value == opt.default or (isinstance(value, list) and list(value) == list(opt.default or [])):
                continue
            for v in value if isinstance(value, list) else [value]:
                args.append((key, str(v).lower() if isinstance(v, bool) else str(v)))
        if self.ignore_errors:
            args.append(("ignore_errors", "true"))
        return format_step(self.name, args)

    def __repr__(self) -> str:
        return f"<pass {self.spec}>"


def coerce_result(value: Any, model: Model) -> PassResult:
    """Accept what a function pass may return: a PassResult, a Model or a GraphDef."""
    if isinstance(value, PassResult):
        return value
    if isinstance(value, Model):
        return PassResult(value, modified=value.graph_def != model.graph_def)
    if value is None:
        return PassResult(model, modified=False)
    if hasattr(value, "node") and hasattr(value, "library"):
        return PassResult(model.with_graph(value), modified=value != model.graph_def)
    raise TypeError(f"a pass must return a PassResult, Model or GraphDef, not {type(value).__name__}")


_OPTION_TYPES = {bool: bool, int: int, float: float, str: str, list: list, tuple: list}


def _options_from_signature(fn: Callable[..., Any]) -> dict[str, Option]:
    """Options from the keyword parameters after ``model``: type from the annotation or the default."""
    out: dict[str, Option] = {}
    params = list(inspect.signature(fn).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation
        if isinstance(ann, str):  # from __future__ import annotations: "list[str]", "int", ...
            ann = {"bool": bool, "int": int, "float": float, "str": str}.get(ann, list if ann.startswith(("list", "tuple")) else None)
        else:
            ann = getattr(ann, "__origin__", ann)
        default = None if p.default is p.empty else p.default
        typ = _OPTION_TYPES.get(ann) or _OPTION_TYPES.get(type(default)) or str
        if typ is list and isinstance(default, tuple):
            default = list(default)
        out[p.name] = Option(typ, default, required=p.default is p.empty)
    return out


def function_pass(
    *, name: str, description: str = "", options: dict[str, Option] | None = None,
    lossy: bool = False, tolerance: float | None = None, applies_to_functions: bool = False,
) -> Callable[[Callable[..., Any]], type[Pass]]:
    """Turn ``fn(model, **options)`` into a :class:`Pass` class.

    The function receives a private copy of the model (it may edit the graph in
    place) and the validated options as keywords. Without ``options``, they are
    read from the function's parameters after ``model`` (type from the
    annotation or the default; a parameter without default is required).
    ``applies_to_functions=True`` runs it on every function body too (see :class:`Pass`).
    """

    def decorate(fn: Callable[..., Any]) -> type[Pass]:
        def run(self: Pass, model: Model) -> PassResult:
            return coerce_result(fn(model.copy(), **self.config), model)

        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        declared = dict(options) if options is not None else _options_from_signature(fn)
        cls = type(fn.__name__, (Pass,), {
            "name": name, "description": doc, "options": declared, "lossy": lossy,
            "tolerance": tolerance, "edits_input": False, "applies_to_functions": applies_to_functions,
            "run": run, "__doc__": fn.__doc__, "__module__": fn.__module__,
        })
        return cls

    return decorate
