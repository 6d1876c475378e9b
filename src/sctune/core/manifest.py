"""Read ``plugins.yaml``, the single list of built-in plugins shipped inside the package."""

from __future__ import annotations

from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sctune.core.errors import PluginError

Kind = Literal["backbone", "adapter", "task", "recipes"]


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Kind
    module: str
    licence: str = ""
    extra: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    manifest: Literal[1]
    plugins: tuple[ManifestEntry, ...]


def read_manifest() -> Manifest:
    """Return the validated manifest of built-in plugins."""
    source = resources.files("sctune") / "plugins.yaml"
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # pragma: no cover - broken install
        raise PluginError(
            "the built-in plugin manifest 'sctune/plugins.yaml' is missing from the installation",
            hint="reinstall sctune ('pip install -e .' from a checkout)",
        ) from exc
    data = yaml.safe_load(text)
    if isinstance(data, str) and data.strip().endswith("plugins.yaml"):
        raise PluginError(
            "'sctune/plugins.yaml' is a text file holding a symlink target; this checkout was made "
            "without symlink support",
            hint="enable symlinks (git config core.symlinks true) and check out again",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise PluginError(f"the built-in plugin manifest is invalid:\n{exc}") from exc
