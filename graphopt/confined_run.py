"""``graphopt optimize`` with the whole run in one confined child: this process never imports TensorFlow.

Loading a stranger's model, running passes over it, executing its graph (the original's reference run,
constant folding, Grappler, verification, a target's runtime) and writing the result all happen in
one child process of :mod:`graphopt.security.sandbox`: address space and file size limited, writes
only beneath its own folder (Landlock, else a read-only mount namespace), no capabilities. Each
execution of the graph inside it still has its own CPU and wall-clock limits and its own label in
errors (:func:`graphopt.security._child.call_inline`); a crash or a limit costs the child, never this
process. Why one child and not one per execution: a second TensorFlow runtime costs about 300 MB
whatever the model (docs/guide/confinement.md, "What it costs"); here there is one runtime, in the child.

This process does what must not be left to code a model may have taken over: it checks and reserves
every output path before the child starts (:class:`graphopt.savers.Outputs`), makes the child's folder
beside the output, checks what the child wrote (plain files and folders only: no links, devices or
hard links), moves it into place, writes the report from the child's data, and says what was written.

The child reports progress as events (plain data and graphopt's result data classes, unpickled with
the sandbox's allowlist): progress lines, the loaded model's source (checked against the outputs at
once), the pipeline's result, the verification reports. :func:`optimize_confined` takes the options of
:func:`graphopt.optimizer.optimize` and returns the same :class:`~graphopt.optimizer.OptimizeResult`,
except that ``result.model`` is a :class:`ModelSummary` (the GraphDef stays in the child).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.errors import ResourceError
from graphopt.model import Signature
from graphopt.optimizer import OptimizeResult, check_options, plan_outputs, written_lines
from graphopt.savers import disk_bytes

RUN_FUNCTION = "graphopt.confined_run:run_in_child"


@dataclass
class ModelSummary:
    """What the parent of a confined run knows of the optimized model: it never holds its graph."""

    source: str
    format: str
    node_count: int
    size_bytes: int
    signature: Signature


def optimize_confined(src: str | os.PathLike, out: str | os.PathLike | None = None, *,
                      plugins: bool | None = None, allow_plugins: list[str] | None = None,
                      progress: Callable[[str], None] | None = None,
                      on_pipeline_done: Callable[[Any], None] | None = None,
                      on_verified: Callable[[Any], None] | None = None,
                      on_target_verified: Callable[[Any], None] | None = None,
                      **options: Any) -> OptimizeResult:
    """:func:`graphopt.optimizer.optimize` of the model at ``src``, run whole in one confined child.

    ``plugins`` / ``allow_plugins`` choose the plugins the child loads (as :meth:`graphopt.plugins.Host.create`);
    ``options`` are :func:`~graphopt.optimizer.optimize`'s keyword arguments (paths in them may be relative
    to this process's folder). Errors keep their class and exit code; a limit hit or a crash anywhere in
    the run is a :class:`~graphopt.errors.ResourceError` naming what ran (the execution of the graph, or
    the run itself) and nothing is written.
    """
    from graphopt.plugins import Host
    from graphopt.savers import Outputs
    from graphopt.security import sandbox

    say = progress or (lambda _line: None)
    host = Host.create(plugins=plugins, allow=allow_plugins)
    src_path = os.path.abspath(src) if os.path.exists(src) else str(src)  # a Hub handle stays as it is
    serving_dir, version, report = options.pop("serving_dir", None), options.pop("version", None), options.pop("report", None)
    fmt_given = options.pop("format", None)
    force = bool(options.pop("force", False))
    runtime, transforms = check_options(options.get("target"), options.get("precision"), host=host,
                                        serving_dir=serving_dir, version=version, sample=options.get("sample"),
                                        transforms=options.get("transforms"), config=options.get("config"))
    for key in ("config", "sample"):  # the child works in its own folder: paths must not depend on ours
        if isinstance(options.get(key), (str, os.PathLike)):
            options[key] = os.path.abspath(options[key])
    with Outputs(force=force, source=src_path) as writes:
        plan = plan_outputs(writes, out=out, format=fmt_given, serving_dir=serving_dir, version=version,
                            report=report, runtime=runtime)
        writes.check_source(src_path)
        writes.reserve()
        limits = sandbox.default_limits(disk_bytes(src_path))
        run_limits = limits.replace(cpu_seconds=None, wall_seconds=None)  # each execution inside has its own
        hub_cache = _hub_cache(src_path)
        box, owned = _run_sandbox(run_limits, folder=_near(plan),
                                  write_paths=plugin_write_paths(host) + ([hub_cache] if hub_cache else []))
        saved = box.label, box.limits
        box.label = f"the optimize run of {src_path}"  # what a crash outside an execution of the graph names
        box.limits = box.limits.replace(cpu_seconds=None, wall_seconds=None)
        try:
            box.clear()
            child_out = box.path / "out" / plan.out_item.path.name if plan.out_item is not None else None
            child_base = (box.path / "serving" / plan.serving_item.path.parent.name
                          if plan.serving_item is not None else None)
            child_report = box.path / "report.json" if plan.report_item is not None else None
            relocate = _Relocate({child_out: plan.out_item.path if plan.out_item else None,
                                  child_base: plan.serving_item.path.parent if plan.serving_item else None,
                                  child_report: plan.report_item.path if plan.report_item else None})

            def on_event(event: Any) -> None:
                kind, value = (event[0], event[1]) if isinstance(event, tuple) and len(event) == 2 else ("", None)
                if kind == "say":
                    say(relocate(str(value)))
                elif kind == "loaded":
                    writes.check_source(str(value))  # a loader may read elsewhere (a Hub cache): an output must not be it
                elif kind == "pipeline" and on_pipeline_done is not None:
                    on_pipeline_done(value)
                elif kind == "verified" and on_verified is not None:
                    on_verified(value)
                elif kind == "target_verified" and on_target_verified is not None:
                    on_target_verified(value)

            kwargs = dict(options, src=src_path, out=None if child_out is None else str(child_out),
                          format=plan.format, serving_dir=None if child_base is None else str(child_base),
                          version=None if plan.serving_item is None else int(plan.serving_item.path.name),
                          report=None if child_report is None else str(child_report), plugins=plugins,
                          allow_plugins=allow_plugins,
                          environment=dict(sandbox.graphopt_environment(),
                                           **({"TFHUB_CACHE_DIR": hub_cache} if hub_cache else {})),
                          overrides=dict(sandbox._OVERRIDES), sys_path=[p for p in sys.path if p])
            try:
                answer = box.call(RUN_FUNCTION, kwargs=kwargs, on_event=on_event)
            except BaseException:
                if child_report is not None and plan.report_item is not None and _plain_file(child_report):
                    text = relocate(child_report.read_text(encoding="utf-8"))  # a failed run's report
                    writes.stage(plan.report_item, lambda target: target.write_text(text, encoding="utf-8"))
                    writes.commit()
                raise
            done = OptimizeResult(answer["pipeline"], verification=answer["verification"], format=plan.format,
                                  source=str(answer["source"]), target=answer["target"], diffs=list(answer["diffs"]))
            if plan.out_item is not None and child_out is not None:
                writes.stage(plan.out_item, lambda target: _take(child_out, target))
            if plan.serving_item is not None and child_base is not None:
                writes.stage(plan.serving_item, lambda target: _take(child_base / plan.serving_item.path.name, target))
                if done.target is not None:
                    done.target.path = plan.serving_item.path
                    done.target.files = [plan.serving_item.path]
            done.written = [item.path for item in (plan.out_item, plan.serving_item) if item is not None]
            if plan.report_item is not None:
                text = json.dumps(done.to_dict(), indent=2, default=str)
                writes.stage(plan.report_item, lambda target: target.write_text(text, encoding="utf-8"))
            writes.commit()
        finally:
            box.label, box.limits = saved
            if owned:
                box.close()
            else:
                box.clear()
    if done.target is not None and plan.serving_item is not None:
        done.target.files = [plan.serving_item.path, *runtime.write_base_files(plan.serving_item.path)]
    for line in answer["lines"]:
        say(relocate(str(line)))
    return done


def run_in_child(src: str, *, plugins: bool | None, allow_plugins: list[str] | None, environment: dict[str, str],
                 overrides: dict[str, Any], sys_path: list[str], **options: Any) -> dict[str, Any]:
    """The child's side: :func:`graphopt.optimizer.optimize` with progress sent to the parent as events."""
    from graphopt.optimizer import optimize
    from graphopt.plugins import Host, set_default_host
    from graphopt.security import _child, sandbox

    sandbox.adopt_environment(environment)  # a shared child serves runs of other settings
    if environment.get("TFHUB_CACHE_DIR"):
        os.environ["TFHUB_CACHE_DIR"] = environment["TFHUB_CACHE_DIR"]
    sandbox.reset_configuration()
    sandbox.configure(**overrides)
    sys.path[:0] = [p for p in sys_path if p not in sys.path]  # modules of passes and plugins the parent can import
    host = Host.create(plugins=plugins, allow=allow_plugins)
    set_default_host(host)
    notify = _child.notify

    done = optimize(src, host=host, progress=lambda line: notify(("say", line)),
                    on_loaded=lambda model: notify(("loaded", str(model.source))),
                    on_pipeline_done=lambda result: notify(("pipeline", portable(result))),
                    on_verified=lambda report: notify(("verified", report)),
                    on_target_verified=lambda report: notify(("target_verified", report)),
                    announce_writes=False, **options)
    return {"pipeline": portable(done.pipeline), "verification": done.verification, "target": done.target,
            "diffs": list(done.diffs), "source": done.source, "lines": written_lines(done)}


def portable(result: Any) -> Any:
    """A :class:`~graphopt.passes.pipeline.PipelineResult` whose model is a :class:`ModelSummary`: what crosses."""
    from dataclasses import replace

    model = result.model
    summary = ModelSummary(source=str(model.source), format=str(model.format), node_count=int(model.node_count),
                           size_bytes=int(model.size_bytes), signature=model.signature)
    return replace(result, model=summary)


# --- helpers -------------------------------------------------------------------------------------------


class _Relocate:
    """Rewrites the child's paths (its folder) into the outputs' real paths in text meant for the user."""

    def __init__(self, mapping: Mapping[Path | None, Path | None]) -> None:
        pairs = [(str(a), str(b)) for a, b in mapping.items() if a is not None and b is not None]
        self.pairs = sorted(pairs, key=lambda ab: -len(ab[0]))

    def __call__(self, text: str) -> str:
        for a, b in self.pairs:
            text = text.replace(a, b)
        return text


def _run_sandbox(limits: Any, *, folder: Path | None, write_paths: list[str]) -> tuple[Any, bool]:
    """The shared sandbox of the current ``shared_sandbox`` block when it fits (tests, notebooks running many
    optimizations), else a fresh one whose folder is beside the output. Returns (sandbox, owned)."""
    from graphopt.security import sandbox

    shared = sandbox._SHARED.get()
    if (shared is not None and not shared.inline and sandbox._fits(shared, limits, {})
            and set(write_paths) <= set(shared.write_paths)):
        return shared, False
    return sandbox.Sandbox(limits, folder=folder, write_paths=write_paths), True


def plugin_write_paths(host: Any) -> list[str]:
    """The folders plugins write to during a run (hook ``graphopt_write_paths``), made if missing: the child
    may write beneath them besides its own folder."""
    from graphopt.errors import PluginError

    paths: list[str] = []
    try:
        answers = host.pm.hook.graphopt_write_paths()
    except Exception as exc:  # a plugin's bug: name the hook, not an internal error
        raise PluginError(f"a plugin's graphopt_write_paths raised {type(exc).__name__}: {exc}",
                          where="hook graphopt_write_paths", hint="report it to the plugin's authors") from exc
    for answer in answers:
        for path in answer or []:
            folder = os.path.abspath(path)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise PluginError(f"a plugin asked to write to {folder}, which cannot be made: {exc.strerror}",
                                  where="hook graphopt_write_paths") from None
            paths.append(folder)
    return sorted(set(paths))


def _near(plan: Any) -> Path | None:
    """An existing folder beside the first output, for the child's folder (then moving is a rename)."""
    for item in (plan.out_item, plan.serving_item, plan.report_item):
        if item is not None:
            parent = item.path.parent
            for folder in (parent, parent.parent):
                if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                    return folder
    return None


def _hub_cache(src: str) -> str | None:
    """For a TF Hub handle: tensorflow_hub's cache folder as this process sees it (made if missing), so the child
    finds what is cached and caches what it downloads there (its own temporary folder is another). Computed as
    tensorflow_hub does, without importing it (it imports TensorFlow)."""
    if "://" not in src or os.path.exists(src):
        return None
    import tempfile

    folder = os.path.abspath(os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules"))
    os.makedirs(folder, exist_ok=True)
    return folder


def _plain_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _take(src: Path, dest: Path) -> None:
    """Move what the child wrote at ``src`` to ``dest`` (a staged path), after checking it is only plain files
    and folders: a child a model took over must not slip a link to another file, or a device, into the output."""
    _check_tree(src)
    if dest.exists() and not dest.is_dir():
        os.replace(src, dest)  # a file output: staged as an empty file
        return
    try:
        os.rename(src, dest)
    except OSError:  # another file system (the child's folder is in the system's temporary folder)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copyfile(src, dest)


def _check_tree(root: Path) -> None:
    entries = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    for entry in entries:
        try:
            st = os.lstat(entry)
        except OSError as exc:
            raise ResourceError(f"the optimize run left no readable {entry.name} ({exc.strerror})",
                                limit="crash") from None
        plain = stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)
        if not plain:
            raise ResourceError("the optimize run wrote something other than plain files and folders into its "
                                f"output: {entry.relative_to(root.parent)}", limit="filesystem",
                                hint="nothing was written; a model whose run writes links or devices is hostile")
