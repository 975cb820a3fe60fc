"""The plugin host: one pluggy manager, built-ins loaded as ordinary plugins, a registry of what they added.

Third-party plugins are pip-installed distributions with an entry point in the
``graphopt`` group::

    [project.entry-points.graphopt]
    fp16 = "graphopt_fp16"

Each is loaded on its own: one that fails to import is recorded (with its
distribution and version) and the others still load. Plugins can be switched
off with ``--no-plugins`` / ``GRAPHOPT_NO_PLUGINS=1`` or limited to an allowlist
with ``--plugins a,b`` / ``GRAPHOPT_PLUGINS=a,b`` (entry-point or distribution
names). Built-ins (``graphopt.passes.gtt`` for GTT's transforms, ``graphopt.builtin``
for graphopt's own passes) are always loaded, through the same hooks.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from graphopt import hookspecs
from graphopt.errors import GraphoptError, PluginError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.passes.base import Pass
    from graphopt.targets.base import Target

ENTRY_POINT_GROUP = "graphopt"
ENV_NO_PLUGINS = "GRAPHOPT_NO_PLUGINS"
ENV_ALLOW = "GRAPHOPT_PLUGINS"
OriginKind = Literal["native", "builtin", "plugin"]
BUILTIN_MODULES: dict[str, OriginKind] = {"graphopt.passes.gtt": "native", "graphopt.builtin": "builtin"}


@dataclass(frozen=True)
class Origin:
    """Where a pass, preset, target or command came from: ``native``, ``builtin`` or a plugin distribution."""

    kind: OriginKind
    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.kind != "plugin":
            return self.kind
        return f"{self.distribution or self.plugin} {self.version or ''}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "plugin": self.plugin, "distribution": self.distribution, "version": self.version}


@dataclass
class PluginFailure:
    """A plugin that could not be loaded or whose registration hook raised."""

    plugin: str
    distribution: str | None
    version: str | None
    error: str
    trace: str | None = field(default=None, repr=False)  # the traceback, shown with --debug

    def to_error(self) -> PluginError:
        dist = f"{self.distribution} {self.version}" if self.distribution else self.plugin
        return PluginError(f"plugin '{self.plugin}' failed to load: {self.error}", where=f"plugin {dist}",
                           hint=f"upgrade or uninstall {self.distribution or self.plugin}, or run with "
                                f"--no-plugins / {ENV_ALLOW}=<names> to leave it out")


@dataclass
class PassInfo:
    cls: type[Pass]
    origin: Origin

    @property
    def name(self) -> str:
        return self.cls.name


@dataclass
class PresetInfo:
    name: str
    transforms: str
    description: str
    origin: Origin
    lossy: bool = False


@dataclass
class TargetInfo:
    cls: type[Target]
    origin: Origin

    @property
    def name(self) -> str:
        return str(self.cls.name)


@dataclass
class CommandInfo:
    name: str
    help: str
    configure: Callable[..., None]
    run: Callable[..., int]
    origin: Origin


@dataclass
class Registry:
    """Every pass, preset, target and command the loaded plugins registered, by name."""

    passes: dict[str, PassInfo] = field(default_factory=dict)
    presets: dict[str, PresetInfo] = field(default_factory=dict)
    targets: dict[str, TargetInfo] = field(default_factory=dict)
    commands: dict[str, CommandInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(set(self.passes) | set(self.presets))

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        if close:
            return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        # The pass may belong to a plugin that failed to load: say which, it is the likely cause.
        failed = [f"{f.distribution} {f.version}" if f.distribution else f.plugin for f in self.failures]
        if failed:
            return (f"plugin(s) that failed to load may provide it: {', '.join(failed)}; "
                    "run 'graphopt plugins' for why, 'graphopt passes' for what is available")
        return "run 'graphopt passes' to list every pass and preset"

    def pass_info(self, name: str) -> PassInfo:
        try:
            return self.passes[name]
        except KeyError:
            raise UsageError(f"unknown pass '{name}'", where="--transforms", hint=self.suggest(name)) from None

    def create(self, name: str, options: dict[str, Any] | None = None) -> Any:
        """Build a pass by name from raw option values (strings from a transform string, or Python values)."""
        info = self.pass_info(name)
        try:
            instance = info.cls(**(options or {}))
        except GraphoptError:
            raise
        except Exception as exc:  # a plugin's constructor bug: name it, do not let it escape raw
            raise PluginError(f"pass '{name}' could not be created: {type(exc).__name__}: {exc}",
                              where=f"plugin {info.origin}", hint="report it to the plugin's authors") from exc
        instance.origin = info.origin
        return instance


class _Manager(pluggy.PluginManager):
    """A pluggy manager that remembers the distribution behind each plugin and what failed to load."""

    def __init__(self) -> None:
        super().__init__("graphopt")
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, Origin] = {}
        self.failures: list[PluginFailure] = []

    def origin_of(self, plugin_name: str) -> Origin:
        return self.origins.get(plugin_name) or Origin("plugin", plugin_name)


def _identity(obj: Any) -> Any:
    return obj


def _normalize(name: str) -> str:
    # Distribution names compare like pip compares them: case-insensitive, "-", "_" and "." alike.
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowlist(allow: list[str] | None) -> set[str] | None:
    if allow is not None:
        return {_normalize(a.strip()) for a in allow if a.strip()}
    env = os.environ.get(ENV_ALLOW)
    return {_normalize(a.strip()) for a in env.split(",") if a.strip()} if env else None


def plugins_disabled_by_env() -> bool:
    return os.environ.get(ENV_NO_PLUGINS, "").lower() not in ("", "0", "false", "no")


def _register(pm: _Manager, plugin: Any, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except Exception:
        # pluggy may have added some of the plugin's hooks before rejecting one: take them all out.
        if pm.is_registered(plugin) or pm.has_plugin(name):
            pm.unregister(name=name)
        raise


def get_plugin_manager(*, plugins: bool | None = None, allow: list[str] | None = None,
                       extra: list[tuple[str, Any]] | None = None) -> _Manager:
    """A fresh plugin manager: built-ins, then third-party entry points unless disabled.

    ``plugins=False`` (or ``GRAPHOPT_NO_PLUGINS=1``) loads built-ins only;
    ``allow`` (or ``GRAPHOPT_PLUGINS``) keeps only the named plugins (entry-point
    or distribution names). ``extra`` registers ``(name, module_or_object)``
    plugins directly, as tests and notebooks do; they obey ``plugins=False`` too.
    """
    pm = _Manager()
    for module_name, kind in BUILTIN_MODULES.items():
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.origins[module_name] = Origin(kind, module_name)
    if plugins is None:
        plugins = not plugins_disabled_by_env()
    if not plugins:
        return pm
    allowed = _allowlist(allow)
    matched: set[str] = set()
    candidates: list[tuple[str, Callable[[], Any], str | None, str | None]] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        candidates.append((ep.name, ep.load, dist_name, version))
    for name, obj in extra or []:
        candidates.append((name, functools.partial(_identity, obj), None, None))
    for name, load, dist_name, version in candidates:
        keys = {_normalize(name)} | ({_normalize(dist_name)} if dist_name else set())
        if allowed is not None and not keys & allowed:
            continue
        matched |= keys
        if pm.has_plugin(name):
            first = pm.origin_of(name)
            if dist_name is None and pm.get_plugin(name) is load():  # an extra that is also installed
                continue
            if first.distribution == dist_name:  # the same distribution seen twice on sys.path
                continue
            pm.failures.append(PluginFailure(name, dist_name, version,
                                             f"entry point name '{name}' is already used by {first}"))
            continue
        try:
            _register(pm, load(), name)
        except Exception as exc:  # a broken plugin must not stop the others
            pm.failures.append(PluginFailure(name, dist_name, version, f"{type(exc).__name__}: {exc}",
                                             traceback.format_exc()))
            continue
        pm.origins[name] = Origin("plugin", name, dist_name, version)
    for wanted in sorted((allowed or set()) - matched):
        pm.failures.append(PluginFailure(wanted, None, None, f"no installed plugin is called '{wanted}' "
                                                             f"(named in --plugins / {ENV_ALLOW})"))
    return pm


@dataclass(frozen=True)
class _Table:
    """One kind of registered thing: the hook (and its deprecated alias) that fills a Registry table."""

    hook: str
    table: str
    # (name-owner lookup, origin, staged registry) -> the ``register`` callback the hook receives
    registrar: Callable[[Callable[[str, str], Origin | None], Origin, Registry], Callable[..., None]]


def _clash(kind: str, name: str, first: Origin, second: Origin) -> PluginError:
    return PluginError(f"{kind} '{name}' is registered twice: by {first} and by {second}",
                       where=f"plugin {second}", hint="uninstall one of the two, or use --plugins to choose")


def _pass_registrar(owner: Callable[[str, str], Origin | None], origin: Origin,
                    staged: Registry) -> Callable[..., None]:
    def register_pass(cls: type) -> None:
        from graphopt.passes.base import Pass

        name = getattr(cls, "name", "")
        if not isinstance(cls, type) or not issubclass(cls, Pass) or not isinstance(name, str) or not name:
            raise PluginError(f"{cls!r} is not a pass class with a name", where=f"plugin {origin}",
                              hint="register Pass subclasses (or @function_pass functions) with 'name' set")
        first = owner("passes", name) or owner("presets", name)
        if first is not None:
            raise _clash("pass", name, first, origin)
        staged.passes[name] = PassInfo(cls, origin)
    return register_pass


def _preset_registrar(owner: Callable[[str, str], Origin | None], origin: Origin,
                      staged: Registry) -> Callable[..., None]:
    def register_preset(name: str, transforms: str, description: str = "", lossy: bool = False) -> None:
        first = owner("presets", name) or owner("passes", name)
        if first is not None:
            raise _clash("preset", name, first, origin)
        from graphopt.passes import transform_string

        transform_string.parse(transforms)  # a preset must at least be a valid transform string
        staged.presets[name] = PresetInfo(name, transforms, description, origin, lossy)
    return register_preset


def _target_registrar(owner: Callable[[str, str], Origin | None], origin: Origin,
                      staged: Registry) -> Callable[..., None]:
    def register_target(cls: type) -> None:
        name = getattr(cls, "name", "")
        if not isinstance(cls, type) or not isinstance(name, str) or not name:
            raise PluginError(f"{cls!r} is not a target class with a name", where=f"plugin {origin}",
                              hint="register graphopt.targets.Target subclasses with 'name' set")
        first = owner("targets", name)
        if first is not None:
            raise _clash("target", name, first, origin)
        staged.targets[name] = TargetInfo(cls, origin)
    return register_target


def _command_registrar(owner: Callable[[str, str], Origin | None], origin: Origin,
                       staged: Registry) -> Callable[..., None]:
    def register_command(name: str, help: str, configure: Callable[..., None], run: Callable[..., int]) -> None:
        first = owner("commands", name)
        if first is not None:
            raise _clash("command", name, first, origin)
        staged.commands[name] = CommandInfo(name, help, configure, run, origin)
    return register_command


# In this order: presets are parsed against the passes registered before them.
_TABLES = (
    _Table("graphopt_register_passes", "passes", _pass_registrar),
    _Table("graphopt_register_presets", "presets", _preset_registrar),
    _Table("graphopt_register_targets", "targets", _target_registrar),
    _Table("graphopt_register_commands", "commands", _command_registrar),
)
_ALIASES: dict[str, tuple[str, ...]] = {}
for _old, _new in hookspecs.DEPRECATED_ALIASES.items():
    _ALIASES[_new] = (*_ALIASES.get(_new, ()), _old)


def build_registry(pm: _Manager) -> Registry:
    """Ask every plugin what it registers. Name clashes are errors that name both origins.

    Each plugin registers into a staging area that is merged only if all of its
    registration hooks succeed: a plugin whose hook raises, or whose names clash,
    is recorded in ``failures`` and unregistered entirely (its run hooks too),
    and the others load as if it were not installed. A built-in whose hook raises
    (a bug) keeps what it registered before the failure, which is recorded too.
    Hooks are called through pluggy, one plugin at a time (``subset_hook_caller``).
    """
    registry = Registry(failures=list(pm.failures))
    broken: list[str] = []
    plugins = list(pm.list_name_plugin())
    for plugin_name, _plugin in plugins:
        origin = pm.origin_of(plugin_name)
        staged = Registry()
        others = [p for n, p in plugins if n != plugin_name]

        def owner(table: str, name: str, staged: Registry = staged) -> Origin | None:
            for reg in (registry, staged):
                info = getattr(reg, table).get(name)
                if info is not None:
                    return info.origin
            return None

        failed = False
        for table in _TABLES:
            register = table.registrar(owner, origin, staged)
            for hook_name in (table.hook, *_ALIASES.get(table.hook, ())):
                try:
                    pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
                except Exception as exc:
                    registry.failures.append(PluginFailure(
                        origin.plugin, origin.distribution, origin.version,
                        f"{hook_name} raised {type(exc).__name__}: {exc}", traceback.format_exc()))
                    failed = True
                    break
            # A plugin is all or nothing. A built-in failing is a bug, but one broken module must not take
            # the other tables (every command, say) with it: keep what registered, the CLI warns about the rest.
            if failed and origin.kind == "plugin":
                break
        if failed and origin.kind == "plugin":
            broken.append(plugin_name)
            continue
        for table in _TABLES:
            getattr(registry, table.table).update(getattr(staged, table.table))
    for plugin_name in broken:
        pm.unregister(name=plugin_name)
    return registry


def plugin_summaries(pm: _Manager) -> list[dict[str, Any]]:
    """The loaded plugins and the hooks each implements, for ``graphopt plugins``."""
    out = []
    for name, plugin in pm.list_name_plugin():
        origin = pm.origin_of(name)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "kind": origin.kind, "distribution": origin.distribution,
                    "version": origin.version, "hooks": hooks})
    return out


@dataclass
class Host:
    """A plugin manager together with the registry built from it: what a pipeline or CLI runs against."""

    pm: _Manager
    registry: Registry

    @classmethod
    def create(cls, *, plugins: bool | None = None, allow: list[str] | None = None,
               extra: list[tuple[str, Any]] | None = None) -> "Host":
        """Load plugins (see :func:`get_plugin_manager`) and build the registry from them."""
        pm = get_plugin_manager(plugins=plugins, allow=allow, extra=extra)
        return cls(pm, build_registry(pm))


_default: Host | None = None


def default_host() -> Host:
    """The process-wide host used when none is given (built once, on first use)."""
    global _default
    if _default is None:
        _default = Host.create()
    return _default


def set_default_host(host: Host | None) -> None:
    """Replace (or with ``None`` reset) the process-wide host, e.g. after the CLI read --no-plugins."""
    global _default
    _default = host
