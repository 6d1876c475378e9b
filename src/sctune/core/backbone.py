"""The backbone contract: a pretrained encoder that tokenizes cells and declares insertion points.

A backbone plugin registers a subclass through ``sctune_register_backbones``. Heavy imports
(torch models, transformers) belong inside the methods so that listing plugins stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sctune.core.capabilities import Capability
    from sctune.core.cells import Expression, GeneMatch, TokenizedCells
    from sctune.core.config import PluginConfig
    from sctune.core.objective import MaskedModelling
    from sctune.core.surfaces import Surfaces


class Backbone(ABC):
    """A single-cell foundation model.

    Class attributes
    ----------------
    name
        Registry name used in recipes (``backbone.name``).
    config_cls
        The pydantic model of its recipe options (a :class:`sctune.core.config.PluginConfig`).
    provides
        The insertion points (:class:`~sctune.core.surfaces.Capability`) its modules offer; checked
        against ``Adapter.requires`` at ``sctune validate`` time, before anything is built.
    description, licence
        Shown by ``sctune plugins``.

    The module returned by :meth:`build` must have an ``int`` attribute ``hidden_size`` and a
    ``forward(batch: dict[str, Tensor]) -> EncoderOutput``, where ``batch`` comes from
    ``TokenizedCells.collate``.

    Newly initialised parts that belong with the head rather than the pretrained encoder
    (Geneformer's BERT pooler, scBERT's convolutional head stem) are listed by name in the module
    attribute ``fresh_modules: tuple[str, ...]`` (submodule names, default empty). The engine
    trains them in every trained method and saves them with the head.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    provides: ClassVar[frozenset[Capability]]
    description: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    parameter_free_options: ClassVar[dict[str, object]] = {}
    """Recipe options under which the cell embedding passes through no freshly initialised module
    (e.g. ``{"pooling": "mean"}``), suggested when a method that trains nothing (``zero_shot``)
    meets a configuration that has one. Empty when the backbone never has fresh modules."""

    @abstractmethod
    def build(self, config: PluginConfig, *, load_weights: bool = True) -> nn.Module:
        """Build the module and load its pretrained weights (random init when the config has none).

        ``load_weights=False`` builds the architecture only (e.g. on the meta device for counts).
        Raise :class:`~sctune.core.errors.CheckpointError` for any key or shape surprise.
        """

    @abstractmethod
    def gene_match(self, genes: Sequence[str], config: PluginConfig) -> GeneMatch:
        """Report how ``genes`` map to the vocabulary (without tokenizing)."""

    @abstractmethod
    def tokenize(self, expr: Expression, config: PluginConfig, *, seed: int) -> TokenizedCells:
        """Turn every cell into tokens. Raise :class:`~sctune.core.errors.DataError` when no gene
        maps or the expression kind cannot be used."""

    @abstractmethod
    def surfaces(self, module: nn.Module) -> Surfaces:
        """Return the insertion points of a module built by :meth:`build`."""

    def resolve(
        self,
        config: PluginConfig,
        *,
        genes: Sequence[str],
        run_dir: Path,
        expression: Expression | None = None,
    ) -> PluginConfig:
        """Fill data-dependent options before :meth:`build`; return the (new, frozen) config.

        Called once per run, and again by ``sctune inspect``, before the module is built. Every
        implementation takes exactly these arguments (the engine passes all of them):

        Parameters
        ----------
        config
            The validated recipe options (an instance of :attr:`config_cls`).
        genes
            The data's gene identifiers in column order (``data.gene_column`` or ``var_names``).
        run_dir
            A folder to write derived files into (the run directory, or a temporary folder for
            ``sctune inspect``); files referenced by the returned config must live there.
        expression
            The TRAINING cells' :class:`~sctune.core.cells.Expression`, or ``None`` when not
            available (a caller that has only gene identifiers). Statistics such as Geneformer's
            gene medians must come from it, never from validation or test cells.

        A randomly initialised backbone with no vocabulary file builds one from ``genes`` and
        writes it into ``run_dir``, returning a config that points at it, so ``sctune predict``
        rebuilds the same model. Return ``config`` itself when nothing needs filling (default).
        """
        return config

    @classmethod
    def example_config(cls, workdir: Path, genes: Sequence[str]) -> dict[str, object]:
        """Recipe options (without ``name``) for a tiny, randomly initialised CPU instance.

        Writes any files it needs (vocabularies, checkpoints in the real format) into ``workdir``.
        The registry-driven test matrix and ``sctune.testing`` use it, so a third-party backbone
        joins the matrix by implementing this. ``genes`` are the symbols of the test data.
        """
        raise NotImplementedError(f"backbone '{cls.name}' provides no example_config")

    def masked_modelling(self, module: nn.Module, config: PluginConfig) -> MaskedModelling | None:
        """The backbone's own masked pretraining objective for ``module`` (built by
        :meth:`build` with ``config``): a new :class:`~sctune.core.objective.MaskedModelling`
        whose decoder holds the checkpoint's pretrained decoder weights when the checkpoint has
        them. Tasks that reconstruct masked inputs (batch correction's GEP, ``pretrain``) use it.
        ``None`` (default) when the backbone has no such objective."""
        return None

    def export_checkpoint(
        self,
        state: dict[str, torch.Tensor],
        config: PluginConfig,
        out_dir: Path,
        *,
        decoder: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Write a checkpoint in the backbone's real format into ``out_dir``.

        ``state`` has the ``state_dict`` names of a module freshly built with ``config`` (the
        engine folds mergeable adapters in first); ``decoder`` holds the masked-modelling
        decoder's tensors under the real checkpoint's names
        (:meth:`~sctune.core.objective.MaskedModelling.checkpoint_state`). Vocabulary files go
        next to the weights. Returns the recipe options (``backbone.<key>``) that load the result,
        e.g. ``{"checkpoint": "<out_dir>"}``; the engine checks that they build and load, and
        writes them as ``backbone.yaml``. Raise ``NotImplementedError`` (default) when the
        backbone cannot export.
        """
        raise NotImplementedError(f"backbone '{self.name}' cannot export a checkpoint")

    def reference_parameter_count(self, config: PluginConfig) -> int | None:
        """Parameters of the published model of this shape, pretraining head included (e.g.
        Geneformer V1-10M's 10,288,722 with its masked-LM head), reported by ``sctune inspect``
        beside sctune's own encoder count. ``None`` when not known."""
        return None

    def randomly_initialised(self, config: PluginConfig) -> bool:
        """True when :meth:`build` with ``config`` draws its weights at random instead of reading
        them from files that :meth:`fingerprint` binds.

        Asked of the recipe's options (reported as ``backbone_randomly_initialised`` in
        ``metrics.json``) and of the resolved options: when still ``True`` there, the run writes
        the drawn weights into the run directory (``backbone.safetensors``) and ``sctune predict``
        loads them, so predictions never depend on a random number generator. The default reads
        a ``checkpoint`` option (``None`` = random); override it when the backbone has none.
        """
        return getattr(config, "checkpoint", None) is None

    def fingerprint(self, config: PluginConfig) -> dict[str, str]:
        """Hashes binding a run to its pretrained files (checkpoint, vocabulary). ``{}`` if none."""
        return {}

    def check(self, config: PluginConfig) -> list[tuple[str, str]]:
        """Cheap validate-time checks: ``(dotted key, message)`` for each problem (missing files)."""
        return []


def resolve_config(
    backbone: Backbone,
    config: PluginConfig,
    *,
    genes: Sequence[str],
    run_dir: Path,
    expression: Expression | None,
) -> PluginConfig:
    """``backbone.resolve(config, genes=..., run_dir=..., expression=...)``: the engine's one call.

    Every :meth:`Backbone.resolve` takes the same keywords, so this is a plain call kept for the
    engine's call sites.
    """
    return backbone.resolve(config, genes=genes, run_dir=run_dir, expression=expression)
