"""sctune: parameter-efficient fine-tuning of single-cell foundation models.

Plugin authors need only :data:`hookimpl`::

    from sctune import hookimpl

    @hookimpl
    def sctune_register_backbones():
        return [MyBackbone]

Everything heavy (torch, scanpy) is imported lazily so that ``sctune --help`` stays fast.
"""

from __future__ import annotations

from sctune.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
