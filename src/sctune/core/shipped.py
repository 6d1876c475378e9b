"""Checkpoints shipped inside a backbone plugin's package, named ``builtin:<name>``.

The built-in backbones use it, and a third-party backbone can ship its own the same way. A
backbone plugin keeps each shipped checkpoint in a folder of its own package, in the backbone's
real checkpoint format, with a ``backbone.yaml`` (the backbone options that load it, paths relative
to the folder), a ``pretraining_cells.json`` (which cells trained it) and a NOTICE (how it was
made, from which data, under which licence). :class:`Shipped` gives the plugin's config the three
things it needs:

- :meth:`Shipped.expand` (a ``mode="before"`` model validator): ``checkpoint: builtin:<name>``
  becomes the packaged checkpoint, and the options of its ``backbone.yaml`` that the checkpoint
  decides (its sizes, its gene order, its dictionaries) are filled in where the recipe leaves them
  unset or null; a recipe value that contradicts one is refused. Other options in
  ``backbone.yaml`` (the pooling it was pretrained with) are documentation: filling in an option
  whose recipe value could equal the field's default would make a saved run ambiguous. A file of
  the folder can also be named directly as ``builtin:<name>/<file>``.
- :meth:`Shipped.serialize` (a field serializer): a packaged path is written back by name, so a run
  folder's ``recipe.resolved.yaml`` loads from whichever installation reads it.
- :meth:`Shipped.name_of`: the ``builtin:`` name of a packaged path, or ``None``.

Core names no checkpoint: the names resolve inside each plugin's config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator, model_serializer, model_validator

from sctune.core.config import PluginConfig

PREFIX = "builtin:"


class Shipped:
    """The shipped checkpoints of one backbone.

    ``root`` is the folder holding one sub-folder per checkpoint; ``names`` maps each
    ``builtin:`` name to its sub-folder; ``target`` is the ``checkpoint`` option's form: ``None``
    when the option is the folder itself (scGPT, Geneformer), else the option in ``backbone.yaml``
    names the file (scBERT's ``.pth``); ``fmt`` says, for error messages, what a checkpoint of
    this backbone otherwise is; ``fixed`` are the options the checkpoint decides (its sizes, its
    gene order): a recipe may leave them unset or null, or repeat the checkpoint's value, and any
    other value is refused, since the weights would not fit. ``path_keys`` are its files: filled in
    where unset or null, a recipe may give its own. ``backbone.yaml``'s other options are not
    filled in.
    """

    def __init__(
        self,
        root: Path,
        names: Mapping[str, str],
        *,
        path_keys: Iterable[str],
        fmt: str,
        fixed: Iterable[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        self.names = dict(names)
        self.path_keys = tuple(path_keys)
        self.fmt = fmt
        self.fixed = tuple(fixed)
        self._options: dict[str, dict[str, Any]] = {}

    # -- names -> folders -------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        """The folder of ``name`` (without the prefix); ``ValueError`` naming the shipped ones."""
        if name not in self.names:
            known = ", ".join(f"'{PREFIX}{n}'" for n in self.names) or "none"
            raise ValueError(
                f"'{PREFIX}{name}' is not a checkpoint shipped with sctune for this backbone "
                f"(shipped: {known}); otherwise give the path of {self.fmt}"
            )
        return self.root / self.names[name]

    def options(self, name: str) -> dict[str, Any]:
        """The options of ``name``'s ``backbone.yaml`` (without ``name``), paths absolute."""
        if name not in self._options:
            self._options[name] = self._read_options(name)
        return dict(self._options[name])

    def _read_options(self, name: str) -> dict[str, Any]:
        import yaml

        folder = self.folder(name)
        raw = yaml.safe_load((folder / "backbone.yaml").read_text()) or {}
        opts: dict[str, Any] = dict(raw.get("backbone") or raw)
        opts.pop("name", None)
        out: dict[str, Any] = {}
        for key, value in opts.items():
            if key == "checkpoint":
                value = folder / value if isinstance(value, str) and not _named(value) else folder
            elif key in self.path_keys and isinstance(value, str) and not _named(value):
                value = folder / value
            out[key] = value
        out.setdefault("checkpoint", folder)
        return out

    def resolve(self, value: object) -> object:
        """``builtin:<name>`` -> the checkpoint option's packaged path; ``builtin:<name>/<file>``
        -> that file; anything else unchanged."""
        if not _named(value):
            return value
        name, _, rest = str(value)[len(PREFIX) :].partition("/")
        if not rest:
            return self.options(name)["checkpoint"]
        folder = self.folder(name)
        path = folder / rest
        if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
            files = ", ".join(sorted(f.name for f in folder.iterdir() if f.is_file()))
            raise ValueError(
                f"'{value}': no file '{rest}' in the shipped checkpoint '{name}' (its files: {files})"
            )
        return path

    def is_ours(self, value: object) -> bool:
        """True for ``builtin:<name>`` and ``builtin:<name>/<file>`` of this backbone."""
        return _named(value) and str(value)[len(PREFIX) :].partition("/")[0] in self.names

    # -- recipe validation and serialization ------------------------------------------------
    def expand(self, data: object) -> object:
        """The recipe section with a shipped checkpoint's options filled in where unset, and every
        ``builtin:<name>[/<file>]`` path of this backbone resolved."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        name = self.shipped_name(out.get("checkpoint"))
        if name is not None:
            for key, implied in self.options(name).items():
                if key != "checkpoint" and key not in self.fixed + self.path_keys:
                    continue  # a suggestion (pooling): documented, the recipe's to choose
                given = out.get(key)
                if key == "checkpoint" or given is None:
                    out[key] = implied
                elif key in self.fixed and not _same(given, implied, self):
                    shown = self.name_of(implied) or implied
                    raise ValueError(
                        f"'{key}' is {given!r} here, but the shipped checkpoint "
                        f"'{PREFIX}{name}' has {key} {shown!r} (the checkpoint decides it): remove "
                        f"'{key}' or set it to null (filled in from the checkpoint) or to {shown!r}"
                    )
        for key in self.path_keys:
            value = out.get(key)
            if key != "checkpoint" and self.is_ours(value) and "/" not in str(value):
                bare = str(value)[len(PREFIX) :]  # the checkpoint's own file for this option
                implied = self.options(bare).get(key)
                if not isinstance(implied, Path):
                    raise ValueError(
                        f"'{key}': '{value}' names a shipped checkpoint, which has no {key} "
                        f"file; name a file as '{value}/<file>'"
                    )
                value = implied
            elif self.is_ours(value) and key != "checkpoint":
                value = self.resolve(value)
            elif key == "checkpoint" and name is not None:
                value = self.options(name)["checkpoint"]
            if isinstance(value, Path):
                value = str(value)  # str and Path options alike accept it
            if key in out or value is not None:
                out[key] = value
        return out

    def shipped_name(self, value: object) -> str | None:
        """The name of the shipped checkpoint ``value`` spells (``builtin:<name>``, a trailing
        slash, ``builtin:<name>/<its checkpoint file>``, the packaged path or a link to it), else
        ``None`` (also for an unknown name: the field validator reports it, located)."""
        if value is None or (_named(value) and not self.is_ours(value)):
            return None
        try:
            named = self.name_of(self.resolve(value))
        except ValueError:
            return None
        return named[len(PREFIX) :] if named is not None and "/" not in named else None

    def name_of(self, path: object) -> str | None:
        """``builtin:<name>`` for the checkpoint option of a shipped folder,
        ``builtin:<name>/<file>`` for another file in it, else ``None``."""
        if path is None or _named(path):
            return None
        try:
            target = Path(str(path)).expanduser().resolve()
        except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop
            return None
        for name, sub in self.names.items():
            folder = self.root / sub
            if target == Path(self.options(name)["checkpoint"]).resolve():
                return f"{PREFIX}{name}"
            if target.is_relative_to(folder) and target != folder:
                return f"{PREFIX}{name}/{target.relative_to(folder).as_posix()}"
        return None

    def serialize(self, value: object) -> object:
        """A packaged path by name; other values as pydantic would write them."""
        if value is None:
            return None
        named = self.name_of(value)
        if named is not None:
            return named
        return str(value) if isinstance(value, Path) else value


def _same(given: object, implied: object, shipped: Shipped) -> bool:
    """``given`` (a recipe value) names the same thing as ``implied`` (a resolved option)."""
    if isinstance(implied, Path):
        if shipped.is_ours(given):
            given = shipped.resolve(given)
        try:
            return Path(str(given)).expanduser().resolve() == implied.resolve()
        except (OSError, ValueError, RuntimeError):
            return False
    return bool(given == implied)


def _named(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


class ShippedCheckpointConfig(PluginConfig):
    """Base of a backbone config whose ``checkpoint`` may name a shipped checkpoint: set the class
    variable ``shipped`` (a :class:`Shipped`). It expands ``builtin:<name>`` before validation,
    reports an unknown name on ``checkpoint`` (located), and writes the packaged paths of
    ``shipped.path_keys`` back by name."""

    shipped: ClassVar[Shipped]

    @model_validator(mode="before")
    @classmethod
    def _expand_shipped(cls, data: object) -> object:
        return cls.shipped.expand(data)

    @field_validator("checkpoint", mode="before", check_fields=False)
    @classmethod
    def _known_shipped(cls, value: object) -> object:
        resolved = cls.shipped.resolve(value)  # an unknown name: ValueError naming the shipped
        return str(resolved) if isinstance(resolved, Path) else resolved

    @model_serializer(mode="wrap")
    def _shipped_by_name(self, handler: Any) -> Any:
        out = handler(self)
        if isinstance(out, dict):
            for key in self.shipped.path_keys:
                if key in out:
                    out[key] = self.shipped.serialize(getattr(self, key))
        return out
