"""The registry: every backbone, adapter and task the plugin manager knows, by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from sctune.core.errors import CompatibilityError, PluginError, did_you_mean, quoted

KINDS = ("backbone", "adapter", "task")
_HOOKS = {
    "backbone": "sctune_register_backbones",
    "adapter": "sctune_register_adapters",
    "task": "sctune_register_tasks",
}


@dataclass(frozen=True)
class Entry:
    """One registered component with its provenance."""

    kind: str
    name: str
    cls: type[Any]
    plugin: str
    distribution: str
    version: str


def _provenance(pm: pluggy.PluginManager, plugin_obj: object) -> tuple[str, str, str]:
    plugin_name = pm.get_name(plugin_obj) or "?"
    known = getattr(pm, "sctune_distributions", {}).get(plugin_name)
    if known is not None:  # loaded from an entry point
        return plugin_name, known[0], known[1]
    # by identity: plugin objects need not be hashable (pluggy accepts any object)
    dist = next((d for p, d in pm.list_plugin_distinfo() if p is plugin_obj), None)
    if dist is not None:
        return plugin_name, dist.project_name, dist.version
    module = getattr(plugin_obj, "__name__", "")
    if module.startswith("sctune."):
        from sctune import __version__

        return plugin_name, "sctune", __version__
    return plugin_name, "(local)", ""


@dataclass
class Registry:
    """Components by kind and name, built from one plugin manager."""

    pm: pluggy.PluginManager
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)

    @classmethod
    def build(cls, pm: pluggy.PluginManager) -> Registry:
        reg = cls(pm=pm, entries={k: {} for k in KINDS})
        for kind, hook_name in _HOOKS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name, dist, version = _provenance(pm, impl.plugin)
                result = impl.function()
                if not isinstance(result, (list, tuple)):
                    raise PluginError(
                        f"plugin '{plugin_name}': {hook_name}() must return a list of classes, "
                        f"got {type(result).__name__}"
                    )
                for comp in result:
                    name = getattr(comp, "name", None)
                    if not isinstance(name, str) or not name:
                        raise PluginError(
                            f"plugin '{plugin_name}': {hook_name}() returned {comp!r} without a "
                            "string 'name' attribute"
                        )
                    if name in reg.entries[kind]:
                        other = reg.entries[kind][name].plugin
                        raise PluginError(
                            f"{kind} '{name}' is registered twice: by plugin '{other}' and by "
                            f"plugin '{plugin_name}'",
                            hint=f"uninstall one, or block it with SCTUNE_DISABLE_PLUGINS={plugin_name}",
                        )
                    reg.entries[kind][name] = Entry(kind, name, comp, plugin_name, dist, version)
        return reg

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, *, where: str | None = None) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            loc = f"{where}: " if where else ""
            raise PluginError(
                f"{loc}unknown {kind} '{name}'{did_you_mean(name, self.entries[kind])}\n"
                f"    installed {kind}s: {quoted(self.entries[kind])}",
                hint="'sctune plugins' lists installed plugins and their options",
            ) from None

    def instance(self, kind: str, name: str) -> Any:
        return self.get(kind, name).cls()

    def compatible_adapters(self, backbone: str) -> list[str]:
        provides = set(self.get("backbone", backbone).cls.provides)
        return [
            n
            for n, e in sorted(self.entries["adapter"].items())
            if set(e.cls.requires) <= provides
        ]

    def check_compatible(self, backbone: str, adapter: str, config: Any = None) -> None:
        """Raise :class:`CompatibilityError` when the adapter needs what the backbone lacks."""
        b = self.get("backbone", backbone).cls
        a = self.get("adapter", adapter).cls
        requires = set(a.requires if config is None else a.requires_for(config))
        missing = requires - set(b.provides)
        if missing:
            raise CompatibilityError(
                f"adapter '{adapter}' cannot be applied to backbone '{backbone}'\n"
                f"  {adapter} requires {quoted(str(m) for m in missing)}; {backbone} provides: "
                f"{quoted(str(c) for c in b.provides)}\n"
                f"  adapters compatible with {backbone}: {quoted(self.compatible_adapters(backbone))}"
            )

    def recipe_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for result in self.pm.hook.sctune_recipe_dirs():
            dirs.extend(Path(p) for p in result)
        return dirs


def plugin_versions(registry: Registry, names: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``{"kind:name": "distribution version"}`` for the given components (run provenance)."""
    out = {}
    for kind, name in names:
        e = registry.get(kind, name)
        out[f"{kind}:{name}"] = f"{e.distribution} {e.version}".strip()
    return out


def distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
