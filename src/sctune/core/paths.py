"""Relative paths in recipes: which keys are paths, and what they are relative to.

The rule (README, "Paths in recipes"):

- a relative path **written in a recipe file** resolves against the folder of that file;
- a relative path given **on the command line** (``key=value`` overrides) or in a recipe passed to
  the Python API **as a mapping** resolves against the working directory;
- values of the form ``<scheme>:<rest>`` with two or more letters before the colon
  (``scanpy:pbmc68k_reduced``, ``builtin:v1``) are names, not paths; ``~`` is expanded.

:func:`resolve_paths` applies one base folder to a recipe mapping and returns a copy in which
every relative path is absolute, so ``recipe.resolved.yaml`` describes a run on its own.

Which keys hold paths is found generically: the envelope's ``data.path`` (one path, a list of
paths or a mapping ``{batch name: path}``), ``data.split.file`` and ``output.dir``, plus every
field of a plugin's options model (and of models nested in it) that is typed ``Path``
(``Path | None``, ``list[Path]``, ...) or declared with :func:`sctune.core.config.PathField`.
Plugins need no registration beyond that annotation.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sctune.core.config import PATH_FORMAT

# Envelope keys that hold paths although they are typed ``str``.
ENVELOPE_PATHS: tuple[tuple[str, ...], ...] = (
    ("data", "path"),
    ("data", "split", "file"),
    ("output", "dir"),
)
PLUGIN_KINDS = ("backbone", "adapter", "task")

# 'scanpy:pbmc68k_reduced', 'builtin:v1', 'hf://...': two or more characters before the colon
# (a Windows drive letter 'C:' is one, so it stays a path).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-_]+:")


def is_name(value: str) -> bool:
    """True for ``<scheme>:<rest>`` values (built-in names), which are never paths."""
    return bool(_NAME.match(value))


def _type_args(annotation: Any) -> Iterator[Any]:
    """``annotation`` and, recursively, its type arguments (``Path | None`` -> Path, None)."""
    yield annotation
    if isinstance(annotation, (typing.ForwardRef, str)):
        return
    for arg in typing.get_args(annotation):
        yield from _type_args(arg)


def _is_path_type(annotation: Any) -> bool:
    return any(isinstance(a, type) and issubclass(a, PurePath) for a in _type_args(annotation))


def is_path_field(field: FieldInfo) -> bool:
    """A field holding a file or folder: typed ``Path`` (anywhere in a union or list) or
    declared with :func:`~sctune.core.config.PathField`."""
    extra = field.json_schema_extra
    if isinstance(extra, Mapping) and extra.get("format") == PATH_FORMAT:
        return True
    return _is_path_type(field.annotation)


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    return [a for a in _type_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def path_keys(model: type[BaseModel], _depth: int = 0) -> list[tuple[tuple[str, ...], ...]]:
    """Recipe keys of ``model``'s path fields, nested models included.

    Each entry lists the spellings of one key path (a field's alias and its name, when they
    differ), e.g. ``[(("model_config",), ("model_config_path",))]``.
    """
    out: list[tuple[tuple[str, ...], ...]] = []
    if _depth > 5:
        return out
    for name, field in model.model_fields.items():
        spellings = tuple(dict.fromkeys(filter(None, [field.alias, name])))
        if is_path_field(field):
            out.append(tuple((s,) for s in spellings))
            continue
        for sub in _nested_models(field.annotation):
            for inner in path_keys(sub, _depth + 1):
                out.append(tuple((s, *i) for s in spellings for i in inner))
    return out


def resolve_value(value: Any, base: Path) -> Any:
    """``value`` made absolute against ``base`` when it is a relative path; else unchanged.

    Lists are resolved element by element and mappings value by value (``data.path`` may be
    ``{batch name: path}``; the keys are names and stay as they are). Empty strings, names
    (``scanpy:...``) and anything that is not a string are returned as they are.
    """
    if isinstance(value, list):
        return [resolve_value(v, base) for v in value]
    if isinstance(value, dict):
        return {k: resolve_value(v, base) for k, v in value.items()}
    if isinstance(value, PurePath):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or is_name(value) or "\x00" in value:
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    return os.path.normpath(os.path.join(os.fspath(base), expanded))


def _resolve_at(node: Any, key_path: Sequence[str], base: Path) -> None:
    """Resolve the value at ``key_path`` inside the nested mapping ``node``, in place."""
    for part in key_path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return
        node = node[part]
    last = key_path[-1]
    if isinstance(node, dict) and last in node:
        node[last] = resolve_value(node[last], base)


def _sections(data: Mapping[str, Any], kind: str) -> list[tuple[int | None, Any]]:
    raw = data.get(kind)
    if isinstance(raw, list):
        return list(enumerate(raw))
    return [(None, raw)]


def _config_cls(registry: Any, kind: str, name: Any) -> type[BaseModel] | None:
    entry = registry.entries.get(kind, {}).get(name) if isinstance(name, str) else None
    return getattr(entry.cls, "config_cls", None) if entry is not None else None


def resolve_paths(
    data: Mapping[str, Any],
    registry: Any,
    base: str | Path,
    *,
    like: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of the recipe mapping ``data`` with every relative path made absolute against
    ``base``.

    Parameters
    ----------
    data
        The recipe as read from YAML (or given as a mapping); not modified.
    registry
        The plugin registry: each plugin section's ``config_cls`` says which of its keys are
        paths. Sections naming an unknown plugin are left alone (validation reports them).
    base
        The folder relative paths are relative to: the recipe file's folder, or the working
        directory for overrides and mappings.
    like
        A recipe whose plugin names decide which keys are paths (default ``data`` itself). Loading
        a file passes the recipe *with* its overrides applied, so that a key of a plugin chosen by
        an override (``backbone.name=...``) still resolves against the file's folder.
    """
    from sctune.core.recipe import Envelope  # recipe.py imports this module

    base = Path(os.path.expanduser(os.fspath(base)))
    out = copy.deepcopy(dict(data))
    envelope_keys = {
        k for spellings in path_keys(Envelope) for k in spellings if k[0] not in PLUGIN_KINDS
    }
    for key_path in sorted(envelope_keys | set(ENVELOPE_PATHS)):
        _resolve_at(out, key_path, base)
    like = like if like is not None else out
    for kind in PLUGIN_KINDS:
        named = dict(_sections(like, kind))
        for index, section in _sections(out, kind):
            if not isinstance(section, dict):
                continue
            chosen = named.get(index)
            name = chosen.get("name") if isinstance(chosen, Mapping) else section.get("name")
            config_cls = _config_cls(registry, kind, name)
            if config_cls is None:
                continue
            for spellings in path_keys(config_cls):
                for key_path in spellings:
                    _resolve_at(section, key_path, base)
    return out
