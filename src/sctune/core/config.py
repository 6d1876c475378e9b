"""Base class for every plugin's options model (the flat keys next to ``name`` in a recipe)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PATH_FORMAT = "path"


class PluginConfig(BaseModel):
    """Options of one plugin. Unknown keys are errors; instances are immutable.

    Subclass it in the plugin's ``config.py`` and point the component's ``config_cls`` at it.
    Document every field with ``Field(description=...)``: ``sctune plugins --options`` prints them.
    Options that hold a file or folder are typed ``Path | None`` or declared with
    :func:`PathField`: relative values in a recipe file then resolve against that file's folder
    (see :mod:`sctune.core.paths`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def PathField(default: Any = None, **kwargs: Any) -> Any:
    """``Field(...)`` for an option that is a file or folder but typed ``str``.

    Use it when the option also takes values that are not paths (``builtin:v1``, a hub id): it
    marks the field the way pydantic marks ``Path`` fields (JSON schema ``format: path``), so
    recipe loading resolves relative values like those of ``Path`` fields. Values written as
    ``<scheme>:<rest>`` (two or more letters before the colon) are never treated as paths.

    >>> class MyConfig(PluginConfig):
    ...     vocab: str | None = PathField(None, description="vocabulary file or 'builtin:v1'")
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["format"] = PATH_FORMAT
    return Field(default, json_schema_extra=extra, **kwargs)
