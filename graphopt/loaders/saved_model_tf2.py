"""TF2 SavedModels (``tf.saved_model.save``, Keras ``model.export``), and freezing any TF2 concrete function.

A signature that reads only variables is frozen straight from the protos and
the checkpoint (:mod:`graphopt.loaders.direct_freeze`: the weights exist once,
as in TF Serving). Other models (lookup tables, no signatures) go through
``tf.saved_model.load``; ``model.metadata["freeze"]`` says which path ran and why.

There, the signature function is frozen with ``convert_variables_to_constants_v2``
and ``lower_control_flow=False``, so functional ``While``/``If`` stay functional
with their bodies in the graph's function library (also frozen). Tables the
function captured are re-created in the graph (see :mod:`graphopt.loaders.tables`).
Models without signatures (some TF2 Hub models) are served through their
``__call__`` function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphopt.errors import InputError
from graphopt.loaders import signatures as sigs
from graphopt.loaders.tables import RESOURCE, inline_captured_tables
from graphopt.model import DEFAULT_SIGNATURE, Model, Signature
from graphopt.runtime import memory


def _key_from_path(path: str) -> str:
    return sigs.sanitize_key(path.replace("/", "_"))


def freeze_function(fn: Any, *, key: str = DEFAULT_SIGNATURE, source: str = "<memory>", fmt: str = "saved_model",
                    input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None) -> Model:
    """Freeze a ``ConcreteFunction`` into a :class:`Model` whose signature keys follow the function's structure.

    Keyword arguments (signature functions) keep their keys; positional ones use
    ``input_names`` or their ``TensorSpec`` names. Dict outputs keep their keys,
    others use ``output_names`` or ``output_<i>``.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.util import nest

    frozen = convert_variables_to_constants_v2(fn, lower_control_flow=False)
    graph_def = frozen.graph.as_graph_def()

    args, kwargs = fn.structured_input_signature
    in_keys: list[str] = []
    flat_args = [s for s in tf.nest.flatten(args, expand_composites=False) if isinstance(s, tf.TensorSpec)]
    for i, spec in enumerate(flat_args):
        name = input_names[i] if input_names and i < len(input_names) else (spec.name or f"input_{i}")
        in_keys.append(sigs.sanitize_key(name))
    for path, spec in nest.flatten_with_joined_string_paths(kwargs):
        if isinstance(spec, tf.TensorSpec):
            in_keys.append(_key_from_path(path))
    for path, spec in nest.flatten_with_joined_string_paths(fn.structured_input_signature):
        if isinstance(spec, tf.TypeSpec) and not isinstance(spec, tf.TensorSpec):
            raise InputError(f"input '{path}' is a {type(spec).__name__}; only dense tensors can be served here",
                             where=source, hint="export a signature with dense tensor inputs")
    user_inputs = list(frozen.inputs[:len(in_keys)])
    by_name = {t.op.name: t for t in user_inputs}
    # Signature functions name their placeholders after their keys; trust the names over the order.
    if set(in_keys) <= set(by_name):
        inputs = {k: sigs.spec_from_tensor(by_name[k]) for k in in_keys}
    else:
        inputs = {k: sigs.spec_from_tensor(t) for k, t in zip(in_keys, user_inputs)}

    structured = fn.structured_outputs
    flat_out = [(p, t) for p, t in nest.flatten_with_joined_string_paths(structured) if t is not None]
    if isinstance(structured, dict):
        out_keys = [_key_from_path(p) for p, _ in flat_out]
    else:
        out_keys = [output_names[i] if output_names and i < len(output_names) else f"output_{i}"
                    for i in range(len(flat_out))]
    if len(frozen.outputs) != len(out_keys):
        raise InputError("cannot match the function's outputs to its structure (composite outputs?)", where=source,
                         hint="export a signature returning a dict of dense tensors")
    outputs = {k: sigs.spec_from_tensor(t) for k, t in zip(out_keys, frozen.outputs)}

    captures = {internal.op.name: external for external, internal in fn.graph.captures
                if internal.dtype == tf.resource}
    init_ops = inline_captured_tables(graph_def, captures)
    left = [n.name for n in graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type == RESOURCE]
    if left:
        raise InputError(f"the function reads resources that are neither variables nor tables: {', '.join(left)}",
                         where=source, hint="graphopt can only freeze variables and lookup tables")
    return Model(graph_def=graph_def, signature=Signature(inputs=inputs, outputs=outputs, key=key),
                 init_ops=init_ops, source=source, format=fmt)


def _pick_call_function(obj: Any, where: str) -> Any:
    call = getattr(obj, "__call__", None)  # noqa: B004 - the tf.function itself, not a callable test
    concrete = list(getattr(call, "concrete_functions", []) or [])
    if not concrete:
        raise InputError("the SavedModel has no signatures and no __call__ function", where=where,
                         hint="export it with signatures={'serving_default': fn}")

    def inference_first(fn: Any) -> int:
        # TF2 Hub models save __call__ for training=True and False; serve the inference one.
        import tensorflow as tf

        flat = tf.nest.flatten(fn.structured_input_signature)
        return 0 if False in flat else 1 if True not in flat else 2

    return sorted(concrete, key=inference_first)[0]


def _refuse_unsafe_init(path: str) -> None:
    """``tf.saved_model.load`` creates and initializes resources, restores saveables and, when the object is
    freed, runs its destructor: refuse functions among them holding ops not known to compute only, ones it
    cannot check (so the object is never created), and assets outside the folder (docs/guide/security.md)."""
    from graphopt.loaders.saved_model_proto import read_saved_model
    from graphopt.security.scan import check_assets, refuse_unsafe_load, tf2_load_time_findings

    metas = list(read_saved_model(path).meta_graphs)
    for meta in metas:
        check_assets(path, meta)
    found = [f for meta in metas for f in tf2_load_time_findings(meta)]
    refuse_unsafe_load(found, runs="its resource constructors, initializers and destructors", where=path,
                       why="tf.saved_model.load runs them")


def load_tf2_object(path: str, tags: Sequence[str] | None) -> Any:
    """``tf.saved_model.load`` with errors naming the tag sets the model has."""
    import tensorflow as tf

    from graphopt.loaders.saved_model_tf1 import tag_sets

    _refuse_unsafe_init(path)
    try:
        return tf.saved_model.load(path, tags=list(tags) if tags is not None else None)
    except (RuntimeError, ValueError) as exc:
        if tags is not None and "tags" in str(exc).lower():
            raise InputError(f"no meta graph with tags {sorted(tags)}", where=path,
                             hint=f"tag sets in the model: {', '.join(str(sorted(t)) for t in tag_sets(path))}"
                             ) from None
        raise


def load_saved_model_tf2(path: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
                         inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
                         fmt: str = "saved_model") -> Model:
    """Load a TF2 SavedModel and freeze the chosen signature (see module docstring)."""
    model = _load_direct(path, signature=signature, tags=tags, fmt=fmt)
    if isinstance(model, Model):
        return restrict(model, inputs, outputs)
    why = model
    obj = load_tf2_object(path, tags)
    available = sorted(getattr(obj, "signatures", {}) or {})
    if available or signature is not None:
        key = sigs.choose_key(available, signature, path)
        fn = obj.signatures[key]
        model = freeze_function(fn, key=key, source=path, fmt=fmt)
    else:
        fn = _pick_call_function(obj, path)
        model = freeze_function(fn, key=DEFAULT_SIGNATURE, source=path, fmt=fmt)
        model.metadata["function"] = "__call__"
    model.metadata["signatures"] = available
    model.metadata["freeze"] = f"tf.saved_model.load ({why})"
    # The loaded object holds every variable (as big as the model) and the frozen function's graph; only
    # the GraphDef is needed from here on, so drop them before the pipeline allocates its own copies.
    del obj, fn
    memory.release()
    return restrict(model, inputs, outputs)


def _load_direct(path: str, *, signature: str | None, tags: Sequence[str] | None, fmt: str) -> Model | str:
    """The model frozen from its protos and checkpoint (:mod:`graphopt.loaders.direct_freeze`), or why not."""
    from graphopt.loaders.direct_freeze import NotDirect, freeze_signature
    from graphopt.loaders.saved_model_tf1 import choose_meta_graph

    meta = choose_meta_graph(path, tags)
    available = sorted(k for k in meta.signature_def if not k.startswith("__"))
    if not available and signature is None:
        return "no signatures: served through __call__"
    key = sigs.choose_key(available, signature, path)
    sig = sigs.signature_from_def(meta.signature_def[key], key)
    try:
        model = freeze_signature(path, meta, key, sig, fmt=fmt)
    except NotDirect as exc:
        return str(exc)
    model.metadata["signatures"] = available
    return model


def restrict(model: Model, inputs: Sequence[str] | None, outputs: Sequence[str] | None) -> Model:
    """Override a loaded signature with user-given inputs/outputs (signature keys or graph names)."""
    if not inputs and not outputs:
        return model
    sig = sigs.override(model.signature, lambda: sigs.graph_tensors(model.graph_def), inputs, outputs, model.source)
    return model.replace(signature=sig)
