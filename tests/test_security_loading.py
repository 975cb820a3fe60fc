"""Hostile models, through the CLI: nothing of a model runs unless every op is on the allowlist or allowed.

Each model here is an attack from issue 11, built by the test into a temporary
folder, with every file it would write or read inside that folder:

- loading runs a model's code: a TF1 init op stored as the ``__saved_model_init_op``
  signature, a saver ``restore_op_name`` (SavedModel and checkpoint) pointing at a
  ``WriteFile``, a TF2 resource whose ``_destroy_resource`` writes a file, and one
  whose destructor cannot be checked;
- ``serve`` of a ``WriteFile`` main op named under ``save/``;
- ops a denylist missed: ``PrintV2`` to ``file://``, ``CacheDataset``,
  ``MatchingFilesDataset``, a ``DatasetFromGraph`` hiding a ``TextLineDataset`` in a
  string constant, ``Abort``;
- assets that leave the model folder: ``..``, an absolute path, a symlink.

Every refusal is checked as the error corpus checks errors (tests/test_errors.py):
exit code 7, one ``error:`` line naming the op, no traceback, nothing written,
the input unchanged -- and the file a ``WriteFile`` targets never exists.
Runs that could crash the test process if the check failed (``Abort``, Grappler
on an embedded graph, ``serve``) go through a child process.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import run_subprocess

from graphopt.errors import ExitCode
from tests import models


@pytest.fixture(autouse=True)
def _nothing_allowed_from_outside(monkeypatch):
    monkeypatch.delenv("GRAPHOPT_ALLOW_OPS", raising=False)
    monkeypatch.delenv("GRAPHOPT_ALLOW_UNSAFE_LOAD", raising=False)


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_refused(result, *ops: str, never: tuple[Path, ...] = ()) -> str:
    """Exit 7, one error line that refuses and names ``ops``, no traceback, no file in ``never``."""
    code, err = (result.returncode, result.stderr) if hasattr(result, "returncode") else (result[0], result[2])
    assert code == ExitCode.UNSAFE, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "refusing to" in lines[0] or "asset" in lines[0], err
    for op in ops:
        assert op in err, (op, err)
    assert "Traceback" not in err
    for path in never:
        assert not path.exists(), f"{path} was written"
    return lines[0]


def _edit_saved_model(path: Path, edit) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    pb = path / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta in proto.meta_graphs:
        edit(meta)
    pb.write_bytes(proto.SerializeToString())


# --- builders: each writes one hostile model; `target` is what its WriteFile would create ----------------------


def _tf1_saved_model(path: Path, target: Path, *, main_op_name: str | None = None, extra_write: bool = True) -> None:
    """x -> matmul(x, w) = y, tag serve; plus ``write_at_load``, a WriteFile of ``target`` (the main op when
    ``main_op_name`` names it, else wired into nothing)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.ones((2, 2), np.float32))
        y = tf.matmul(x, w, name="y")
        write = tf.io.write_file(str(target), "written while loading", name=main_op_name or "write_at_load") \
            if extra_write else None
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            sig = v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig},
                                                 main_op=write if main_op_name else None)
            builder.save()


def init_op_signature(path: Path, target: Path) -> None:
    """The init op stored as the ``__saved_model_init_op`` signature, which TF's loader reads before the
    collections (how TF2 exports store it)."""
    _tf1_saved_model(path, target)

    def edit(meta):
        meta.signature_def["__saved_model_init_op"].outputs["__saved_model_init_op"].name = "write_at_load"
    _edit_saved_model(path, edit)


def _hijack_restore(meta) -> None:
    """The saver's restore op becomes a NoOp waiting on the real restore *and* ``write_at_load``."""
    evil = meta.graph_def.node.add(name="save/restore_everything", op="NoOp")
    evil.input.extend(["^" + meta.saver_def.restore_op_name, "^write_at_load"])
    meta.saver_def.restore_op_name = evil.name


def restore_op_saved_model(path: Path, target: Path) -> None:
    _tf1_saved_model(path, target)
    _edit_saved_model(path, _hijack_restore)


def restore_op_checkpoint(path: Path, target: Path) -> Path:
    """A TF1 checkpoint whose .meta's restore op also writes ``target``; returns the prefix."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    v1 = tf.compat.v1
    path.mkdir(parents=True)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.ones((2, 2), np.float32))
        tf.matmul(x, w, name="y")
        tf.io.write_file(str(target), "written while loading", name="write_at_load")
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver([w]).save(sess, str(path / "model.ckpt"))
    meta_file = path / "model.ckpt.meta"
    meta = meta_graph_pb2.MetaGraphDef.FromString(meta_file.read_bytes())
    _hijack_restore(meta)
    meta_file.write_bytes(meta.SerializeToString())
    return path / "model.ckpt"


def _lookup_module(target: Path | None):
    """A TF2 module whose signature reads a table (so graphopt must use ``tf.saved_model.load``); its resource's
    destructor writes ``target`` when given."""
    import tensorflow as tf

    class Table(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

        def _initialize(self):
            return tf.raw_ops.LookupTableImportV2(table_handle=self.resource_handle, keys=tf.constant(["a", "b"]),
                                                  values=tf.constant([1, 2], tf.int64))

        def _destroy_resource(self):
            if target is not None:
                tf.io.write_file(str(target), "written when the table was freed")
            return tf.raw_ops.DestroyResourceOp(resource=self.resource_handle, ignore_lookup_error=True)

    class Lookup(tf.Module):
        def __init__(self):
            self.table = Table()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            return {"ids": tf.raw_ops.LookupTableFindV2(table_handle=self.table.resource_handle, keys=words,
                                                        default_value=tf.constant(-1, tf.int64))}

    return Lookup()


def _save_tf2(module, path: Path, signature) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={"serving_default": signature})


def destructor_writes(path: Path, target: Path) -> None:
    module = _lookup_module(target)
    _save_tf2(module, path, module.serve)
    del module
    gc.collect()
    target.unlink(missing_ok=True)  # the builder's own object ran its destructor: not what is tested


def destructor_unchecked(path: Path, target: Path) -> None:
    """A resource whose ``_destroy_resource`` names a function the library does not hold."""
    module = _lookup_module(None)
    _save_tf2(module, path, module.serve)

    def edit(meta):
        lib = meta.graph_def.library
        keep = [f for f in lib.function if "destroyer" not in f.signature.name]
        del lib.function[:]
        lib.function.extend(keep)
    _edit_saved_model(path, edit)


def _tf2_function_model(path: Path, fn, spec) -> None:
    import tensorflow as tf

    class Module(tf.Module):
        pass

    module = Module()
    module.serve = tf.function(fn, input_signature=spec)
    _save_tf2(module, path, module.serve)


def _x_spec():
    import tensorflow as tf

    return [tf.TensorSpec([None, 2], tf.float32, name="x")]


def print_to_file(path: Path, target: Path) -> None:
    import tensorflow as tf

    def fn(x):
        tf.print("leaked", x, output_stream=f"file://{target}")
        return {"y": x * 2.0}
    _tf2_function_model(path, fn, _x_spec())


def cache_dataset(path: Path, target: Path) -> None:
    import tensorflow as tf

    def fn(x):
        ds = tf.data.Dataset.from_tensors(x).cache(str(target))
        return {"y": ds.get_single_element() + 1.0}
    _tf2_function_model(path, fn, _x_spec())


def matching_files_dataset(path: Path, target: Path) -> None:
    import tensorflow as tf

    pattern = str(target.parent / "*")

    def fn(x):
        ds = tf.raw_ops.MatchingFilesDataset(patterns=tf.constant([pattern]))
        ds = tf.raw_ops.TakeDataset(input_dataset=ds, count=tf.constant(1, tf.int64), output_types=[tf.string],
                                    output_shapes=[[]])
        name = tf.raw_ops.DatasetToSingleElement(dataset=ds, output_types=[tf.string], output_shapes=[[]])[0]
        return {"y": x + tf.cast(tf.strings.length(name), tf.float32)}
    _tf2_function_model(path, fn, _x_spec())


def dataset_from_graph(path: Path, target: Path) -> None:
    """The signature returns the first line of ``target`` (a server-side file) through a TextLineDataset that
    only exists inside a serialized GraphDef held by a string constant."""
    import tensorflow as tf

    target.write_text("server-side secret\n")
    lines = tf.data.TextLineDataset(str(target))
    hidden = tf.raw_ops.DatasetToGraphV2(input_dataset=lines._variant_tensor).numpy()

    def fn(q):
        ds = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(hidden))
        line = tf.raw_ops.DatasetToSingleElement(dataset=ds, output_types=[tf.string], output_shapes=[[]])[0]
        return {"line": tf.strings.join([q[:1], line])}
    _tf2_function_model(path, fn, [tf.TensorSpec([None], tf.string, name="q")])


def abort(path: Path, target: Path) -> None:
    import tensorflow as tf

    def fn(x):
        with tf.control_dependencies([tf.raw_ops.Abort(error_msg="aborted by the model")]):
            return {"y": tf.identity(x)}
    _tf2_function_model(path, fn, _x_spec())


BUILDERS = {"init_op_signature": init_op_signature, "restore_op_saved_model": restore_op_saved_model,
            "destructor_writes": destructor_writes, "destructor_unchecked": destructor_unchecked,
            "print_to_file": print_to_file, "cache_dataset": cache_dataset,
            "matching_files_dataset": matching_files_dataset, "dataset_from_graph": dataset_from_graph,
            "abort": abort}


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """name -> (model path, target path), built once; each model and its target in a folder of its own."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            folder = tmp_path_factory.mktemp(name)
            target = folder / "target" / "written.txt"
            target.parent.mkdir()
            model = folder / "model"
            if name == "restore_op_checkpoint":
                model = restore_op_checkpoint(model, target)
            else:
                BUILDERS[name](model, target)
            built[name] = (model, target)
        return built[name]
    return get


# --- loading runs a model's code --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, op", [("init_op_signature", "WriteFile"), ("restore_op_saved_model", "WriteFile"),
                                      ("restore_op_checkpoint", "WriteFile"), ("destructor_writes", "WriteFile"),
                                      ("destructor_unchecked", "_destroy_resource")])
def test_loading_runs_nothing_unchecked(name, op, hostile, cli, tmp_path):
    model, target = hostile(name)
    folder = model.parent if name == "restore_op_checkpoint" else model
    before = tree_hash(folder)
    extra = ["--outputs", "y"] if name == "restore_op_checkpoint" else []
    line = assert_refused(cli("inspect", model, *extra), op, never=(target,))
    assert "refusing to load" in line
    out = tmp_path / "out"
    assert_refused(cli("optimize", model, *extra, "-o", out, "--no-verify"), op, never=(target, out))
    assert tree_hash(folder) == before


def test_refusals_name_the_node_and_the_function(hostile, cli):
    model, target = hostile("destructor_writes")
    _, _, err = cli("inspect", model)
    assert "__inference__destroyer" in err and "/WriteFile: WriteFile reads or writes files" in err
    model, target = hostile("restore_op_saved_model")
    _, _, err = cli("inspect", model)
    assert "write_at_load: WriteFile reads or writes files" in err
    model, _ = hostile("destructor_unchecked")
    _, _, err = cli("inspect", model)
    assert "root.table: _destroy_resource names function" in err and "cannot check" in err


def test_allowed_per_op_the_load_runs_it_confined(hostile, cli, monkeypatch):
    """An op allowed per op runs at load -- in the confined child that loads the model, so its write outside
    that child's folder is refused (exit 8, naming the file) and never happens."""
    model, target = hostile("init_op_signature")
    code, _, err = cli("inspect", model, "--allow-op", "ReadFile")  # another op: still refused
    assert code == ExitCode.UNSAFE and not target.exists()
    monkeypatch.setenv("GRAPHOPT_ALLOW_OPS", "WriteFile")
    code, _, err = cli("inspect", model)
    assert code == ExitCode.RESOURCE, err
    text = " ".join(err.split())
    assert "refused access to a file outside its sandbox folder" in text and "written.txt" in text, err
    assert not target.exists()  # the signature init op is what TF's loader runs: it ran, and was refused
    monkeypatch.delenv("GRAPHOPT_ALLOW_OPS")
    model, target = hostile("destructor_writes")  # the destructor runs when the loaded object is freed
    result = run_subprocess("inspect", model, env={"GRAPHOPT_ALLOW_OPS": "WriteFile"}, timeout=300)
    assert result.returncode == 0, result.stderr  # TF logs a destructor's failure and goes on
    assert not target.exists()
    # In graphopt's own process (sandbox off) the same op does write: the allowance is what let it run.
    result = run_subprocess("inspect", model, env={"GRAPHOPT_ALLOW_OPS": "WriteFile", "GRAPHOPT_SANDBOX": "off"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "written when the table was freed"
    target.unlink()
    monkeypatch.setenv("GRAPHOPT_ALLOW_UNSAFE_LOAD", "1")  # the old name, for loading
    model, target = hostile("restore_op_saved_model")
    code, _, err = cli("inspect", model)
    assert code == ExitCode.RESOURCE, err
    assert not target.exists()


def test_serve_refuses_a_main_op_named_under_save(tmp_path):
    base = tmp_path / "base"
    target = tmp_path / "target.txt"
    _tf1_saved_model(base / "1", target, main_op_name="save/write_at_load")
    before = tree_hash(base)
    # A child process: were the check to let it through, the server would run (and be killed by the timeout).
    result = run_subprocess("serve", base, "--port", "0", "--rest-port", "-1", timeout=300)
    assert_refused(result, "WriteFile", "save/write_at_load", never=(target,))
    assert tree_hash(base) == before


# --- ops a denylist missed ---------------------------------------------------------------------------------------

DENYLIST_MISSED = [("print_to_file", "PrintV2"), ("cache_dataset", "CacheDatasetV2"),
                   ("matching_files_dataset", "MatchingFilesDataset"), ("dataset_from_graph", "DatasetFromGraph")]


@pytest.mark.parametrize("name, op", DENYLIST_MISSED)
def test_inspect_lists_what_would_be_refused(name, op, hostile, cli):
    import json

    model, _ = hostile(name)
    code, out, err = cli("inspect", model, "--json")
    assert code == 0, err
    found = json.loads(out)["unsafe_ops"]
    assert op in {f["op"] for f in found}
    assert all(f["reason"] for f in found)
    if name == "dataset_from_graph":  # the graph in the string constant is walked too
        hidden = [f for f in found if f["nested"]]
        assert "TextLineDataset" in {f["op"] for f in hidden}


@pytest.mark.parametrize("name, op", DENYLIST_MISSED)
def test_verification_and_bench_refuse(name, op, hostile, cli, tmp_path):
    model, target = hostile(name)
    before = tree_hash(model)
    out = tmp_path / "out"
    line = assert_refused(cli("optimize", model, "-o", out), op, never=(out,))
    assert "refusing to run the original model for verification" in line
    line = assert_refused(cli("bench", model, "--runs", "1", "--warmup", "0", "--no-cold"), op)
    assert "refusing to run it for benchmarking" in line
    assert tree_hash(model) == before
    if name != "dataset_from_graph":  # that one's target is the file it reads
        assert not target.exists()


@pytest.mark.parametrize("name, op", DENYLIST_MISSED + [("abort", "Abort")])
def test_pipeline_refuses_before_constant_folding_or_grappler(name, op, hostile, tmp_path):
    """``optimize --no-verify`` ran GTT's fold_constants on these (DatasetFromGraph crashed it with SIGSEGV):
    the pipeline now refuses the input before any pass. A child process, so a crash cannot take pytest along."""
    model, target = hostile(name)
    out = tmp_path / "out"
    result = run_subprocess("optimize", model, "-o", out, "--no-verify", timeout=300)
    line = assert_refused(result, op, never=(out,))
    assert "refusing to run the pipeline on it" in line and "fold_constants" in result.stderr
    if name != "dataset_from_graph":
        assert not target.exists()


def test_abort_is_refused_not_run(hostile, tmp_path):
    model, _ = hostile("abort")
    out = tmp_path / "out"
    result = run_subprocess("optimize", model, "-o", out, timeout=300)
    assert_refused(result, "Abort", never=(out,))  # exit 7, not SIGABRT, nor 0 with nothing written


@pytest.mark.parametrize("name, op", [("dataset_from_graph", "DatasetFromGraph"), ("abort", "Abort")])
def test_serve_refuses(name, op, hostile, tmp_path):
    """A third-party TF2 SavedModel served as it is: refused before any request, no secret line returned."""
    model, _ = hostile(name)
    base = tmp_path / "base"
    shutil.copytree(model, base / "1")
    result = run_subprocess("serve", base, "--port", "0", "--rest-port", "-1", timeout=300)
    assert_refused(result, op)
    assert "server-side secret" not in result.stdout + result.stderr


def test_allowing_an_op_by_its_old_flag(hostile, cli, tmp_path):
    model, target = hostile("print_to_file")
    out = tmp_path / "out.pb"
    code, _, err = cli("optimize", model, "-o", out, "--no-verify", "--transforms", "fold_constants",
                       "--allow-unsafe-ops", "PrintV2")
    assert code == 0, err
    assert out.exists()
    assert not target.exists()  # allowed to stay in the model; folding still never executes it


# --- asset paths --------------------------------------------------------------------------------------------


def _tf1_vocab_model(path: Path) -> None:
    models.tf1_saved_model(path, tags=("serve",), signatures=("serving_default", "logits"))


def _set_asset_filename(path: Path, name: str) -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    def edit(meta):
        packed = meta.collection_def["saved_model_assets"].any_list.value
        for item in packed:
            asset = meta_graph_pb2.AssetFileDef()
            item.Unpack(asset)
            asset.filename = name
            item.Pack(asset)
    _edit_saved_model(path, edit)


def _tf2_vocab_model(path: Path, vocab: Path) -> None:
    import tensorflow as tf

    class Vocab(tf.Module):
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            return {"ids": self.table.lookup(words)}

    module = Vocab()
    _save_tf2(module, path, module.serve)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("kind", ["tf1", "tf2"])
def test_assets_resolve_only_inside_the_model(kind, how, cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret-word\nother-secret\n")
    model = tmp_path / "models" / "m"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("apple\nbanana\n")
    if kind == "tf1":
        _tf1_vocab_model(model)
    else:
        _tf2_vocab_model(model, vocab)
    (asset,) = (model / "assets").iterdir()
    if how == "symlink":
        asset.unlink()
        asset.symlink_to(secret)
    elif kind == "tf1":
        _set_asset_filename(model, "../../../secret.txt" if how == "dotdot" else str(secret))
    else:
        def edit(meta):
            for a in meta.asset_file_def:
                a.filename = "../../../secret.txt" if how == "dotdot" else str(secret)
        _edit_saved_model(model, edit)
    before = tree_hash(model)
    out = tmp_path / "out"
    for args in (("inspect", model), ("optimize", model, "-o", out, "--no-verify")):
        code, _, err = cli(*args)
        line = assert_refused((code, "", err), never=(out,))
        assert "asset" in line and ("absolute" in line or "'..'" in line or "outside the model's folder" in line)
        assert "assets/ folder" in err  # the hint
    assert tree_hash(model) == before


def test_own_assets_still_load(cli, tmp_path):
    """No false refusal: tables read from the model's own assets load, TF1 and TF2."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("apple\nbanana\n")
    _tf1_vocab_model(tmp_path / "tf1")
    _tf2_vocab_model(tmp_path / "tf2", vocab)
    vocab.unlink()  # only the models' own copies remain
    for model in (tmp_path / "tf1", tmp_path / "tf2"):
        code, _, err = cli("inspect", model)
        assert code == 0, err


def test_keras_lambda_code_is_not_loaded(cli, tmp_path):
    """A .keras file carries a Lambda layer's Python bytecode; Keras's safe_mode (which graphopt asks for)
    refuses to deserialize it, so its code never runs: an input error, nothing written."""
    import keras

    target = tmp_path / "target.txt"
    inp = keras.Input((2,), name="x")
    out = keras.layers.Lambda(lambda x, t=str(target): (open(t, "w").close(), x)[1])(inp)
    model_file = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(str(model_file))
    target.unlink(missing_ok=True)  # building the model ran the lambda once, here
    before = tree_hash(model_file)
    code, _, err = cli("inspect", model_file)
    assert code == ExitCode.INPUT and "Traceback" not in err and "Lambda" in err, err
    assert not target.exists() and tree_hash(model_file) == before
