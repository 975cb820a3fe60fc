"""Write a :class:`~graphopt.model.Model`: a SavedModel TF Serving loads as it is, or a frozen ``.pb``/``.pbtxt``.

The SavedModel is written with ``tf.compat.v1.saved_model.Builder``: the frozen
GraphDef imported into a fresh graph, tag ``serve``, one signature with the
model's original keys, dtypes and shapes (method ``tensorflow/serving/predict``),
the init ops grouped as the main op (TF Serving runs it at load), assets copied.
The graph the Builder sees is the model's skeleton (big constants without their
values: it only needs structure, shapes and signatures); the constants' values
are put back while ``saved_model.pb`` is streamed to disk one node at a time, so
a 100 MB model is never imported, copied or serialised whole (the file is byte
for byte what the Builder writes for the full graph).

Every write is atomic: it goes to a temporary sibling of the destination and
is renamed into place only when complete; on any failure the temporary is
removed and nothing is left behind. An existing destination is replaced only
with ``force=True``; a destination inside the model's own source folder is
refused, so the input is never written to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphopt.errors import GraphoptError, OutputError
from graphopt.model import Model, node_name

SAVE_FORMATS = ("saved_model", "pb", "pbtxt")


def format_for(path: str | os.PathLike, given: str | None = None) -> str:
    """``given``, else ``pb``/``pbtxt`` from the extension, else ``saved_model``."""
    if given:
        if given not in SAVE_FORMATS:
            raise OutputError(f"unknown output format '{given}'", hint=f"use one of {', '.join(SAVE_FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    return {".pb": "pb", ".pbtxt": "pbtxt"}.get(suffix, "saved_model")


def refuse_input_overlap(model: Model, dest: Path) -> None:
    """:class:`OutputError` if writing ``dest`` (file or folder) would write into or over the model's source."""
    dest = Path(dest).resolve()  # resolved like the source: a symlink must not lead into the input
    src = model.source
    if src and "://" not in src and src != "<memory>":
        source = Path(src).resolve()
        source_dir = source if source.is_dir() else None
        if source == dest or (source_dir is not None and (source_dir == dest or source_dir in dest.parents)):
            raise OutputError("the output would be written inside the input model", where=str(dest),
                              hint="choose an output path outside the model's folder; graphopt never writes to its input")
        if dest in source.parents:
            raise OutputError("the output would replace a folder holding the input model", where=str(dest),
                              hint="choose another output path")


def check_destination(model: Model, dest: Path, force: bool) -> None:
    refuse_input_overlap(model, dest)
    if dest.exists() or dest.is_symlink():
        if not force:
            raise OutputError("the output already exists", where=str(dest), hint="pass --force to replace it")
    # Missing folders are created only when the model is written (a failed run leaves none behind); here
    # the nearest existing one must be a folder that accepts new files -- checked now, not after the pipeline.
    existing = dest.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError("the output path runs through a file, not a folder", where=str(existing),
                          hint="choose an output path inside a folder")
    try:  # a read-only or pseudo file system (/proc) refuses new files even to root
        fd, probe = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".probe", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder: {exc.strerror or exc}", where=str(existing),
                          hint="check the path and permissions; nothing was written") from None


def _make_parent(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", where=str(dest.parent),
                          hint="check the path and permissions") from None


def _atomic(dest: Path, force: bool, write: Callable[[Path], None], is_dir: bool) -> None:
    """Run ``write(tmp)`` on a temporary sibling of ``dest``, then move it into place."""
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
            target = tmp / "model"  # Builder wants a folder that does not exist yet
        else:
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            os.close(fd)
            tmp = target = Path(name)
    except OSError as exc:
        raise OutputError(f"cannot write next to the output: {exc.strerror or exc}", where=str(dest.parent),
                          hint="check the path and permissions") from None
    old: Path | None = None
    try:
        write(target)
        if dest.exists() or dest.is_symlink():
            # Move the old output aside first, so a failed rename can put it back.
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(target, dest)
    except BaseException as exc:
        if old is not None and not dest.exists():
            os.replace(old, dest)
            old = None
        if isinstance(exc, GraphoptError):
            raise
        if isinstance(exc, Exception):
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OutputError(f"cannot write the model: {reason}", where=str(dest),
                              hint="nothing was written; rerun with --debug for details") from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink(
                missing_ok=True)


def _tensor_info(graph: Any, name: str) -> Any:
    import tensorflow as tf

    return tf.compat.v1.saved_model.utils.build_tensor_info(graph.get_tensor_by_name(name))


def write_saved_model(model: Model, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a SavedModel into ``directory``, which must not exist (no atomicity, no checks).

    Reusable by anything that lays out its own folders (e.g. versioned serving layouts).
    """
    import tensorflow as tf
    from tensorflow.core.framework import tensor_shape_pb2

    from graphopt.graph.checks import skeleton
    from graphopt.runtime.session import add_default_attrs

    directory = Path(directory)
    # tf.import_graph_def of the model's own GraphDef used to fill its default attrs in place; callers (the
    # byte count optimize prints) saw that, so it still happens, on the model, before the skeleton is taken.
    add_default_attrs(model.graph_def)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(skeleton(model.graph_def), name="")
        sig = model.signature
        inputs, outputs = {}, {}
        for specs, infos in ((sig.inputs, inputs), (sig.outputs, outputs)):
            for key, spec in specs.items():
                info = _tensor_info(graph, spec.name)
                if spec.shape is not None and info.tensor_shape.unknown_rank:
                    # Keep the loaded signature's shape where the graph lost it (shape inference
                    # cannot see through some ops, e.g. function calls after a pass rewrote them).
                    info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
                        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in spec.shape]))
                infos[key] = info
        signature_def = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs=inputs, outputs=outputs, method_name=sig.method_name)
        main_op = None
        if model.init_ops:
            init = [graph.get_operation_by_name(node_name(n)) for n in model.init_ops]
            main_op = tf.group(*init, name="graphopt_main_op")
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = tf.compat.v1.saved_model.Builder(str(directory))
            builder.add_meta_graph_and_variables(
                sess, [tf.saved_model.SERVING], signature_def_map={sig.key: signature_def},
                main_op=main_op, strip_default_attrs=False, clear_devices=True)
            builder.save()
    del graph, sess, builder
    _put_back_constants(directory / "saved_model.pb", model.graph_def)
    if model.assets:
        assets = directory / "assets"
        assets.mkdir(exist_ok=True)
        for name, src in model.assets.items():
            shutil.copy2(src, assets / name)
    return directory


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_size: int) -> bytes:
    """Tag and length of a length-delimited field (wire type 2) whose payload follows."""
    return _varint(number << 3 | 2) + _varint(payload_size)


def _put_back_constants(path: Path, graph_def: Any) -> None:
    """Rewrite the skeleton ``saved_model.pb`` at ``path`` with the constants' values from ``graph_def``.

    Written in pieces, in the order protobuf serialises fields (by number), so only one node is ever
    serialised at a time: SavedModel = schema_version (1), meta_graphs (2); MetaGraphDef = meta_info_def
    (1), graph_def (2), the rest (3..); GraphDef = node (1, repeated), then its other fields.
    """
    from tensorflow.core.framework import graph_pb2, node_def_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    values = {n.name: n.attr["value"] for n in graph_def.node if n.op == "Const" and "value" in n.attr}
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    if len(saved.meta_graphs) != 1:  # the Builder wrote exactly one: anything else is not ours to rewrite
        raise OutputError(f"unexpected SavedModel layout ({len(saved.meta_graphs)} meta graphs)", where=str(path))
    meta = saved.meta_graphs[0]

    def full(node: Any) -> Any:
        value = values.get(node.name) if node.op == "Const" else None
        if value is None or value.tensor.ByteSize() == node.attr["value"].tensor.ByteSize():
            return node
        whole = node_def_pb2.NodeDef()
        whole.CopyFrom(node)  # the skeleton's node: small, its big value was left out
        whole.attr["value"].CopyFrom(value)
        return whole

    sizes = [full(node).ByteSize() for node in meta.graph_def.node]
    if sizes == [node.ByteSize() for node in meta.graph_def.node]:
        return  # no constant was big enough to be left out: the Builder's file is already complete
    rest = graph_pb2.GraphDef()
    rest.CopyFrom(meta.graph_def)
    del rest.node[:]
    graph_tail = rest.SerializeToString(deterministic=True)
    graph_size = sum(len(_field(1, n)) + n for n in sizes) + len(graph_tail)
    head = meta_graph_pb2.MetaGraphDef()
    if meta.HasField("meta_info_def"):
        head.meta_info_def.CopyFrom(meta.meta_info_def)
    meta_head = head.SerializeToString(deterministic=True)
    tail = meta_graph_pb2.MetaGraphDef()
    tail.CopyFrom(meta)
    tail.ClearField("meta_info_def")
    tail.ClearField("graph_def")
    meta_tail = tail.SerializeToString(deterministic=True)
    meta_size = len(meta_head) + len(_field(2, graph_size)) + graph_size + len(meta_tail)
    top = saved_model_pb2.SavedModel(saved_model_schema_version=saved.saved_model_schema_version)
    with open(path, "wb") as f:
        f.write(top.SerializeToString(deterministic=True))
        f.write(_field(2, meta_size))
        f.write(meta_head)
        f.write(_field(2, graph_size))
        for node, size in zip(meta.graph_def.node, sizes):
            piece = full(node).SerializeToString(deterministic=True)
            if len(piece) != size:  # never expected: the lengths already written would be wrong
                raise OutputError("node size changed while writing", where=f"{path}, node {node.name}")
            f.write(_field(1, size))
            f.write(piece)
            del piece
        f.write(graph_tail)
        f.write(meta_tail)


def write_graph_def(model: Model, path: str | os.PathLike, *, text: bool = False) -> Path:
    """Write the frozen GraphDef (binary, or text format with ``text=True``)."""
    path = Path(path)
    if text:
        from google.protobuf import text_format

        path.write_text(text_format.MessageToString(model.graph_def))
    else:
        _stream_graph_def(model.graph_def, path)
    return path


def _stream_graph_def(graph_def: Any, path: Path) -> None:
    """``path.write_bytes(graph_def.SerializeToString())`` one node at a time (GraphDef: node = 1, library = 2,
    version = 3, versions = 4, serialised in that order): a whole 100 MB graph serialised at once costs 2.5x."""
    from tensorflow.core.framework import graph_pb2

    with open(path, "wb") as f:
        for node in graph_def.node:
            piece = node.SerializeToString()
            f.write(_field(1, len(piece)))
            f.write(piece)
            del piece
        if graph_def.HasField("library"):
            library = graph_def.library.SerializeToString()
            f.write(_field(2, len(library)))
            f.write(library)
            del library
        tail = graph_pb2.GraphDef(version=graph_def.version)
        if graph_def.HasField("versions"):
            tail.versions.CopyFrom(graph_def.versions)
        f.write(tail.SerializeToString())


def save(model: Model, path: str | os.PathLike, *, format: str | None = None, force: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically as ``saved_model`` (default), ``pb`` or ``pbtxt``.

    The format defaults to the extension (``.pb``/``.pbtxt``) or a SavedModel
    folder. Raises :class:`OutputError` if ``path`` exists (unless ``force``),
    lies inside the input model, or cannot be written. Returns the path.
    """
    fmt = format_for(path, format)
    dest = Path(path).absolute()
    check_destination(model, dest, force)
    _make_parent(dest)
    if fmt == "saved_model":
        _atomic(dest, force, lambda target: write_saved_model(model, target), is_dir=True)
    else:
        _atomic(dest, force, lambda target: write_graph_def(model, target, text=fmt == "pbtxt"), is_dir=False)
    return dest
