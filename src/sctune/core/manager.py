"""Build the pluggy plugin manager: hookspecs, built-ins from the manifest, then entry points.

``get_plugin_manager`` is a factory, never an import-time global, so tests build their own.
Escape hatches: ``SCTUNE_DISABLE_PLUGINS=a,b`` blocks plugins by name,
``SCTUNE_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points, ``SCTUNE_TRACE_PLUGINS=1`` traces hook
calls to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pluggy
import yaml

from sctune.core import hookspecs
from sctune.core.errors import PluginError, did_you_mean
from sctune.core.manifest import read_manifest

ENTRY_POINT_GROUP = "sctune"


def _import(module: str, who: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise PluginError(
            f"plugin '{who}' failed to import module '{module}': {type(exc).__name__}: {exc}",
            hint=f"fix or uninstall the plugin, or block it with SCTUNE_DISABLE_PLUGINS={who}",
        ) from exc


def _register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    if pm.is_blocked(name):
        return
    if pm.get_plugin(name) is not None:
        raise PluginError(f"two plugins are named '{name}'; plugin names must be unique")
    try:
        pm.register(module, name=name)
    except ValueError as exc:  # the same module object under another name
        raise PluginError(f"plugin '{name}' could not be registered: {exc}") from exc


def read_local_plugins(path: Path) -> list[tuple[str, str]]:
    """Parse a ``--plugins`` file: ``plugins: [{name: x, module: my_pkg.plugin} ...]``.

    A module may also be a path to a ``.py`` file (relative to the YAML file).
    """
    if not path.is_file():
        raise PluginError(f"plugin list '{path}' does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise PluginError(
            f"'{path}': expected a top-level 'plugins' list of {{name, module}} entries",
            hint="example:\nplugins:\n  - {name: my_backbone, module: my_plugins.backbone}",
        )
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"name", "module"} <= set(entry):
            raise PluginError(
                f"'{path}': plugins.{i}: needs 'name' and 'module' keys, got {entry!r}"
            )
        out.append((str(entry["name"]), str(entry["module"])))
    return out


def _load_local(module: str, base: Path, name: str) -> ModuleType:
    if module.endswith(".py"):
        file = (base / module).resolve()
        if not file.is_file():
            raise PluginError(f"plugin '{name}': file '{file}' does not exist")
        spec = importlib.util.spec_from_file_location(f"sctune_local_{name}", file)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            raise PluginError(f"plugin '{name}' failed to import '{file}': {exc}") from exc
        return mod
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return _import(module, name)


def get_plugin_manager(
    *,
    autoload: bool = True,
    blocked: Iterable[str] = (),
    local_plugins: Sequence[Path] = (),
    extra_modules: Iterable[tuple[str, ModuleType | object]] = (),
) -> pluggy.PluginManager:
    """Return a new plugin manager with built-ins, entry points and local plugins registered.

    Parameters
    ----------
    autoload
        Load the ``sctune`` entry-point group (also off with ``SCTUNE_DISABLE_PLUGIN_AUTOLOAD=1``).
    blocked
        Plugin names never to register (added to ``SCTUNE_DISABLE_PLUGINS``).
    local_plugins
        YAML files listing unpackaged plugin modules (``--plugins``).
    extra_modules
        ``(name, module_or_object)`` pairs registered last (tests, notebooks).
    """
    pm = pluggy.PluginManager("sctune")
    pm.add_hookspecs(hookspecs)
    env_blocked = [b.strip() for b in os.environ.get("SCTUNE_DISABLE_PLUGINS", "").split(",")]
    for name in [*blocked, *env_blocked]:
        if name:
            pm.set_blocked(name)

    for entry in read_manifest().plugins:
        if not pm.is_blocked(entry.name):
            _register(pm, _import(entry.module, entry.name), entry.name)

    # provenance of entry-point plugins, read by the registry ('sctune plugins' shows it)
    distributions: dict[str, tuple[str, str]] = {}
    pm.sctune_distributions = distributions  # type: ignore[attr-defined]
    if autoload and os.environ.get("SCTUNE_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true"):
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                dist = ep.dist.name if ep.dist else "?"
                raise PluginError(
                    f"plugin '{ep.name}' (distribution '{dist}', entry point '{ep.value}') failed "
                    f"to import: {type(exc).__name__}: {exc}",
                    hint=f"fix or uninstall it, or set SCTUNE_DISABLE_PLUGINS={ep.name}",
                ) from exc
            _register(pm, plugin, ep.name)
            if ep.dist is not None and not pm.is_blocked(ep.name):
                distributions[ep.name] = (ep.dist.name, ep.dist.version)

    for path in local_plugins:
        for name, module in read_local_plugins(Path(path)):
            _register(pm, _load_local(module, Path(path).resolve().parent, name), name)

    for name, obj in extra_modules:
        _register(pm, obj, name)  # type: ignore[arg-type]

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        who = pm.get_name(exc.plugin) or repr(exc.plugin)
        known = [n for n in dir(hookspecs) if n.startswith("sctune_")]
        unknown = [n for n in dir(exc.plugin) if n.startswith("sctune_") and n not in known]
        what = ", ".join(f"'{n}'{did_you_mean(n, known)}" for n in unknown) or str(exc)
        raise PluginError(
            f"plugin '{who}' implements a hook sctune does not define: {what}",
            hint="hooks are listed in sctune.core.hookspecs; check the spelling (prefix 'sctune_')",
        ) from exc
    if os.environ.get("SCTUNE_TRACE_PLUGINS", "") in ("1", "true"):
        pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm
