"""Plugins as users meet them: pip-installed packages found through the `graphopt` entry-point group.

The two plugins in plugins/ are installed (editable, once per session) and driven through the CLI;
broken plugins are real distributions on sys.path (a .dist-info folder with an entry point), run
in a child process as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from graphopt.plugins import Host
from tests.conftest import ROOT, run_subprocess

_spec = importlib.util.spec_from_file_location("graphopt_plugins_conftest", ROOT / "plugins" / "conftest.py")
_installer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_installer)


@pytest.fixture(scope="session", autouse=True)
def installed_plugins():
    """``pip install --no-deps --no-build-isolation -e plugins/<x>``, skipped when already installed."""
    _installer.install_plugins()


def _json(out: str):
    return json.loads(out)


def _by_name(rows):
    return {r["name"]: r for r in rows}


# --- listing -------------------------------------------------------------------------------------------


def test_passes_json_lists_plugin_passes_and_presets_with_distribution_and_version(cli):
    code, out, _ = cli("passes", "--json")
    assert code == 0
    rows = _by_name(_json(out))
    strip = rows["strip_metadata"]
    assert strip["kind"] == "pass" and strip["description"]
    assert strip["origin"] == {"kind": "plugin", "plugin": "strip_metadata",
                               "distribution": "graphopt-strip-metadata", "version": "0.1.0"}
    assert set(strip["options"]) == {"attr", "keep", "op", "devices", "functions"}
    assert strip["options"]["devices"] == {"type": "bool", "default": True, "required": False,
                                           "help": "also clear device strings"}
    preset = rows["strip-and-merge"]
    assert preset["kind"] == "preset" and preset["origin"]["distribution"] == "graphopt-strip-metadata"
    assert preset["transforms"].startswith("strip_metadata")
    assert rows["fold_constants"]["origin"]["kind"] == "native"
    assert rows["gtt-seed"]["kind"] == "preset"
    assert any(r["origin"]["kind"] == "builtin" for r in rows.values())


def test_passes_table_shows_origins(cli):
    code, out, _ = cli("passes")
    assert code == 0
    assert "strip_metadata" in out and "graphopt-strip-metadata 0.1.0" in out and "native" in out


def test_plugins_json_lists_loaded_plugins_and_their_hooks(cli):
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    data = _json(out)
    plugins = _by_name(data["plugins"])
    assert plugins["snapshots"]["hooks"] == ["graphopt_pass_failed", "graphopt_pass_finish", "graphopt_write_paths"]
    assert plugins["snapshots"]["distribution"] == "graphopt-snapshots" and plugins["snapshots"]["version"] == "0.1.0"
    assert plugins["strip_metadata"]["hooks"] == ["graphopt_register_passes", "graphopt_register_presets"]
    assert plugins["graphopt.passes.gtt"]["kind"] == "native" and plugins["graphopt.builtin"]["kind"] == "builtin"
    assert data["failed"] == []
    code, out, _ = cli("plugins")
    assert code == 0 and "graphopt-snapshots 0.1.0" in out and "graphopt_pass_finish" in out


# --- switching plugins off and choosing them --------------------------------------------------------------


def _plugin_names(cli, *flags):
    code, out, _ = cli(*flags, "plugins", "--json")
    assert code == 0
    return {r["name"] for r in _json(out)["plugins"] if r["kind"] == "plugin"}


def test_no_plugins_flag_and_environment(cli, monkeypatch):
    assert {"snapshots", "strip_metadata"} <= _plugin_names(cli)
    assert _plugin_names(cli, "--no-plugins") == set()
    monkeypatch.setenv("GRAPHOPT_NO_PLUGINS", "1")
    assert _plugin_names(cli) == set()
    code, out, _ = cli("passes", "--json")
    assert "strip_metadata" not in _by_name(_json(out))  # built-ins and native passes only
    assert "fold_constants" in _by_name(_json(out))


def test_allowlist_by_entry_point_or_distribution_name(cli, monkeypatch):
    assert _plugin_names(cli, "--plugins", "snapshots") == {"snapshots"}
    monkeypatch.setenv("GRAPHOPT_PLUGINS", "graphopt_strip_metadata")  # distribution name, any spelling
    assert _plugin_names(cli) == {"strip_metadata"}
    code, out, err = cli("--plugins", "snapshots,nope", "plugins", "--json")
    assert code == 0
    failed = _json(out)["failed"]
    assert [f["plugin"] for f in failed] == ["nope"] and "no installed plugin" in failed[0]["error"]
    assert "nope" in err  # warned on stderr


# --- broken plugins do not stop the others -------------------------------------------------------------------


def _fake_distribution(root: Path, dist: str, version: str, entry: str, module: str | None, source: str = "") -> None:
    """A real installed distribution as importlib.metadata sees it: a .dist-info folder on sys.path."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[graphopt]\n{entry} = {module or entry}\n")
    if source:
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _fake_distribution(root, "graphopt-missing", "1.2.3", "missing", "graphopt_missing_module_xyz")
    _fake_distribution(root, "graphopt-raises", "0.9.0", "raises", "graphopt_raises", """
        from graphopt import hookimpl, function_pass

        @function_pass(name="raises_pass")
        def raises_pass(model):
            return None

        @hookimpl
        def graphopt_register_passes(register):
            register(raises_pass)          # registered, then taken back when the plugin fails

        @hookimpl
        def graphopt_register_presets(register):
            raise RuntimeError("preset table corrupt")

        @hookimpl
        def graphopt_pass_start(pass_, model, context):
            raise AssertionError("a failed plugin must not keep running hooks")
    """)
    _fake_distribution(root, "graphopt-clash", "2.0.0", "clash", "graphopt_clash", """
        from graphopt import hookimpl, function_pass

        @function_pass(name="fold_constants")
        def fold(model):
            return None

        @hookimpl
        def graphopt_register_passes(register):
            register(fold)
    """)
    return root


def test_broken_plugins_are_reported_and_the_others_still_load(broken_site):
    proc = run_subprocess("plugins", "--json", env={"PYTHONPATH": str(broken_site)})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    failed = {f["plugin"]: f for f in data["failed"]}
    assert set(failed) == {"missing", "raises", "clash"}
    assert failed["missing"]["distribution"] == "graphopt-missing" and failed["missing"]["version"] == "1.2.3"
    assert "ModuleNotFoundError" in failed["missing"]["error"]
    assert "preset table corrupt" in failed["raises"]["error"] and failed["raises"]["version"] == "0.9.0"
    assert "registered twice" in failed["clash"]["error"] and "native" in failed["clash"]["error"]
    loaded = {p["name"] for p in data["plugins"]}
    assert {"snapshots", "strip_metadata"} <= loaded and not loaded & set(failed)
    # Each failure is one warning line naming the distribution and its version.
    assert "graphopt-missing 1.2.3" in proc.stderr and "graphopt-raises 0.9.0" in proc.stderr
    assert "graphopt-clash 2.0.0" in proc.stderr


def test_a_broken_plugin_leaves_nothing_behind_and_runs_no_hooks(broken_site, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(broken_site))
    import importlib

    importlib.invalidate_caches()
    host = Host.create(plugins=True)
    assert "raises_pass" not in host.registry.passes  # what it registered before failing is gone
    assert host.registry.passes["fold_constants"].origin.kind == "native"
    assert not host.pm.has_plugin("raises")
    import tensorflow as tf

    from graphopt.passes.pipeline import Pipeline
    from tests.models import graph_model

    model = graph_model(lambda x: {"y": tf.identity(x * 2.0, name="y")}, {"x": (tf.float32, (None, 2))})
    Pipeline.parse("fold_constants", host=host).run(model)  # its graphopt_pass_start would raise
    sys.modules.pop("graphopt_raises", None)
    sys.modules.pop("graphopt_clash", None)


# --- using plugin passes from the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metadata_pb(tmp_path_factory):
    """A frozen .pb with colocation, devices, _output_shapes and constants only metadata keeps apart."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default(), g.device("/device:CPU:0"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.constant(np.arange(9, dtype=np.float32).reshape(3, 3), name="w")
        with tf.compat.v1.colocate_with(w):
            w_read = tf.identity(w, name="w/read")
        a = tf.add(tf.matmul(x, w_read), tf.constant([1.0, 2.0, 3.0], name="b1"), name="a")
        with g.device(None):
            b = tf.add(a, tf.constant([1.0, 2.0, 3.0], name="b2"), name="b")
        tf.nn.relu(b, name="y")
    path = tmp_path_factory.mktemp("meta") / "model.pb"
    path.write_bytes(g.as_graph_def(add_shapes=True).SerializeToString())
    return path


def _optimize(cli, src, out, *args):
    report = out.with_suffix(".json")
    code, _, err = cli("optimize", src, "-o", out, "--format", "pb", "--inputs", "x", "--outputs", "y",
                       "--report", report, *args)
    assert code == 0, err
    return json.loads(report.read_text())


def _graph(path):
    import tensorflow as tf

    return tf.compat.v1.GraphDef.FromString(Path(path).read_bytes())


TEXT = "strip_metadata(keep=_output_shapes) { fold_constants(ignore_errors=true) merge_duplicate_nodes }*3"


def test_optimize_uses_a_plugin_pass_and_preset_by_name(cli, metadata_pb, tmp_path):
    report = _optimize(cli, metadata_pb, tmp_path / "a.pb", "--transforms", TEXT)
    first = report["passes"][0]
    assert first["name"] == "strip_metadata" and first["origin"] == "graphopt-strip-metadata 0.1.0"
    assert first["status"] == "applied" and first["counters"]["bytes_saved"] > 0
    out = _graph(tmp_path / "a.pb")
    assert not any(n.device or "_class" in n.attr for n in out.node)
    report = _optimize(cli, metadata_pb, tmp_path / "b.pb", "--transforms", "strip-and-merge")
    assert [p["name"] for p in report["passes"]] == ["strip_metadata", "strip_unused_nodes", "merge_duplicate_nodes"]
    assert len({"b1", "b2"} & {n.name for n in _graph(tmp_path / "b.pb").node}) == 1


def test_cli_string_and_toml_config_give_the_same_pipeline_as_code(cli, metadata_pb, tmp_path):
    from graphopt.passes.pipeline import Pipeline, Repeat

    host = Host.create()
    reg = host.registry
    in_code = Pipeline([reg.create("strip_metadata", {"keep": ["_output_shapes"]}),
                        Repeat(["fold_constants(ignore_errors=true)", reg.passes["merge_duplicate_nodes"].cls()],
                               max_iterations=3)], host=host)
    (tmp_path / "graphopt.toml").write_text(textwrap.dedent("""
        pipeline = [
          {pass = "strip_metadata", keep = ["_output_shapes"]},
          {repeat = ["fold_constants(ignore_errors=true)", {pass = "merge_duplicate_nodes"}], max_iterations = 3},
        ]
    """))
    by_text = _optimize(cli, metadata_pb, tmp_path / "text.pb", "--transforms", TEXT)
    by_toml = _optimize(cli, metadata_pb, tmp_path / "toml.pb", "--config", tmp_path / "graphopt.toml")
    assert in_code.spec == by_text["spec"] == by_toml["spec"] == TEXT
    assert _graph(tmp_path / "text.pb") == _graph(tmp_path / "toml.pb")
    from graphopt.model import Model, Signature, TensorSpec

    sig = Signature({"x": TensorSpec("x:0", "float32", (None, 3))}, {"y": TensorSpec("y:0", "float32", (None, 3))})
    in_code_graph = in_code.run(Model(_graph(metadata_pb), sig)).model.graph_def
    assert [n.name for n in in_code_graph.node] == [n.name for n in _graph(tmp_path / "text.pb").node]


def test_snapshots_plugin_through_the_cli(metadata_pb, tmp_path):
    snaps = tmp_path / "snaps"
    proc = run_subprocess("optimize", metadata_pb, "-o", tmp_path / "out.pb", "--format", "pb", "--inputs", "x",
                          "--outputs", "y", "--transforms", "strip_metadata fold_constants",
                          env={"GRAPHOPT_SNAPSHOT_DIR": str(snaps)})
    assert proc.returncode == 0, proc.stderr
    (run,) = snaps.iterdir()
    assert sorted(p.name for p in run.iterdir()) == ["001-strip_metadata.json", "001-strip_metadata.pb",
                                                     "002-fold_constants.json", "002-fold_constants.pb"]
    assert _graph(run / "002-fold_constants.pb") == _graph(tmp_path / "out.pb")


def test_a_failing_pass_writes_nothing_unless_keep_going(cli, metadata_pb, tmp_path):
    bad = "strip_metadata rename_node(old_node_name=a, new_node_name=b1) fold_constants"  # b1 exists: GTT refuses
    out = tmp_path / "out.pb"
    code, _, err = cli("optimize", metadata_pb, "-o", out, "--format", "pb", "--inputs", "x", "--outputs", "y",
                       "--transforms", bad)
    assert code == 4 and not out.exists()
    assert "rename_node" in err and "native" in err
    report = _optimize(cli, metadata_pb, out, "--transforms", bad, "--keep-going")
    assert [p["status"] for p in report["passes"]] == ["applied", "rolled_back", "applied"]
    assert out.exists()


def test_passes_name_shows_one_pass_or_preset(cli):
    code, out, _ = cli("passes", "strip_metadata")
    assert code == 0 and "graphopt-strip-metadata 0.1.0" in out and "devices" in out and "ignore_errors" in out
    code, out, _ = cli("passes", "remove_nodes", "--json")
    row = _json(out)
    assert row["name"] == "remove_nodes" and row["options"]["op"]["required"] is True
    code, out, _ = cli("passes", "strip-and-merge")
    assert code == 0 and "strip_metadata strip_unused_nodes merge_duplicate_nodes" in out
    code, _, err = cli("passes", "fold_constant")
    assert code == 2 and "fold_constants" in err


def test_deprecated_registration_names_still_register_until_1_0():
    # Plugins written before the one-prefix rename (register_passes / register_presets /
    # register_commands) keep working: the aliases fill the same tables, and pluggy warns.
    from graphopt import function_pass, hookimpl
    from graphopt.plugins import Host

    @function_pass(name="old_style_pass")
    def old_style_pass(model):
        return None

    class OldStyle:
        @hookimpl
        def register_passes(self, register):
            register(old_style_pass)

        @hookimpl
        def register_presets(self, register):
            register("old-style", "old_style_pass strip_unused_nodes", "an old-style preset")

    with pytest.warns(DeprecationWarning, match="register_passes is deprecated"):
        host = Host.create(plugins=True, allow=["old"], extra=[("old", OldStyle())])
    assert host.registry.passes["old_style_pass"].origin.plugin == "old"
    assert host.registry.presets["old-style"].transforms == "old_style_pass strip_unused_nodes"


def test_targets_are_registered_through_the_same_hook_contract():
    from graphopt import hookimpl
    from graphopt.plugins import Host

    class Toy:
        name = "toy-runtime"

    class Dup:
        name = "toy-runtime"

    class First:
        @hookimpl
        def graphopt_register_targets(self, register):
            register(Toy)

    class Second:
        @hookimpl
        def graphopt_register_targets(self, register):
            register(Dup)

    host = Host.create(plugins=True, allow=["first", "second"], extra=[("first", First()), ("second", Second())])
    assert host.registry.targets["toy-runtime"].cls is Toy
    [failure] = [f for f in host.registry.failures if f.plugin == "second"]
    assert "target 'toy-runtime' is registered twice" in failure.error
