"""Helpers for testing sctune and sctune plugins: tiny data, example recipes, custom registries,
and contract checks (:func:`check_backbone`, :func:`check_adapter`, :func:`check_task`,
:func:`check_plugin`, raising :class:`PluginCheckError`).

Everything here works offline: the data come from scanpy's bundled ``pbmc68k_reduced``, whose raw
counts are recovered exactly from ``.raw`` (``log1p(counts / n_counts * 1e4)``) and the
library sizes in ``obs['n_counts']``. A plugin author tests a backbone like this::

    from sctune import api, testing

    adata_path = testing.write_tiny_h5ad(tmp_path / "cells.h5ad", n_cells=120)
    registry = testing.registry_with(MyBackbone)
    recipe = testing.example_recipe(registry, "mybackbone", "lora", tmp_path, adata_path)
    result = api.run(recipe, registry=registry, progress=False, log=lambda m: None)

and checks it against the plugin contract (every problem listed in one ``PluginCheckError``)::

    testing.check_backbone(MyBackbone)      # or check_adapter(MyAdapter), check_task(MyTask)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sctune._plugin_checks import (
    PluginCheckError,
    check_adapter,
    check_backbone,
    check_plugin,
    check_task,
)

if TYPE_CHECKING:
    import anndata as ad
    import torch
    from torch import nn

    from sctune.core.backbone import Backbone
    from sctune.core.cells import Expression, TokenizedCells
    from sctune.core.config import PluginConfig
    from sctune.core.registry import Registry
    from sctune.core.surfaces import Surfaces

__all__ = [
    "LABEL_COLUMN",
    "ExampleBackbone",
    "PluginCheckError",
    "adata_genes",
    "check_adapter",
    "check_backbone",
    "check_plugin",
    "check_task",
    "example_backbone",
    "example_recipe",
    "pbmc68k_counts",
    "plugin_object",
    "reference_scgpt_class",
    "reference_scgpt_model",
    "registry_with",
    "tiny_adata",
    "tiny_expression",
    "write_tiny_h5ad",
]

LABEL_COLUMN = "cell_type"


def pbmc68k_counts() -> ad.AnnData:
    """scanpy's ``pbmc68k_reduced`` (700 cells x 765 genes) with raw integer counts in ``X``.

    ``obs['cell_type']`` holds scanpy's ``bulk_labels`` (10 classes); ``obs['n_counts']`` is the
    full-library size. The counts equal ``../shared/data/pbmc68k_reduced_counts.h5ad``.
    """
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    ref = sc.datasets.pbmc68k_reduced()
    raw = ref.raw.X
    raw = raw.toarray() if sparse.issparse(raw) else np.asarray(raw)
    library = ref.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.round(np.expm1(raw.astype(np.float64)) * library / 1e4).astype(np.float32)
    obs = ref.obs[["n_counts", "n_genes", "percent_mito", "louvain"]].copy()
    obs[LABEL_COLUMN] = ref.obs["bulk_labels"].astype(str).to_numpy()
    return ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=ref.raw.var[[]].copy())


def tiny_adata(
    n_cells: int = 120,
    *,
    n_genes: int | None = None,
    seed: int = 0,
    min_per_class: int = 3,
    counts: bool = True,
) -> ad.AnnData:
    """A stratified subsample of :func:`pbmc68k_counts` keeping ``min_per_class`` cells of each type.

    ``n_genes`` keeps the genes detected in most cells (all 765 by default). With
    ``counts=False``, ``X`` holds scanpy's log1p-normalised values instead of counts.
    """
    adata = pbmc68k_counts()
    labels = adata.obs[LABEL_COLUMN].to_numpy()
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for cls in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        keep += idx[: min(min_per_class, len(idx))].tolist()
    rest = rng.permutation(np.setdiff1d(np.arange(adata.n_obs), keep))
    keep += rest[: max(0, n_cells - len(keep))].tolist()
    out = adata[np.sort(np.array(keep))].copy()
    if n_genes is not None and n_genes < out.n_vars:
        detected = np.asarray((out.X > 0).sum(axis=0)).ravel()
        out = out[:, np.sort(np.argsort(-detected, kind="stable")[:n_genes])].copy()
    if not counts:
        X = out.X.copy()
        lib = out.obs["n_counts"].to_numpy(dtype=np.float64)
        X = X.multiply(1e4 / lib[:, None]).tocsr()
        X.data = np.log1p(X.data).astype(np.float32)
        out.X = X
    # a pseudo-batch for tests of batch-aware tasks (alternating; NOT a real batch effect)
    out.obs["sample"] = np.where(np.arange(out.n_obs) % 2 == 0, "s1", "s2")
    return out


def write_tiny_h5ad(path: Path, n_cells: int = 120, **kwargs: Any) -> Path:
    """Write :func:`tiny_adata` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_adata(n_cells, **kwargs).write_h5ad(path)
    return path


_HOOKS = {
    "backbone": "sctune_register_backbones",
    "adapter": "sctune_register_adapters",
    "task": "sctune_register_tasks",
}


def plugin_object(*components: type) -> object:
    """Wrap component classes (backbones, adapters, tasks) in a plugin object with hookimpls."""
    from sctune import hookimpl
    from sctune.core.adapter import Adapter
    from sctune.core.backbone import Backbone
    from sctune.core.task import Task

    groups: dict[str, list[type]] = {k: [] for k in _HOOKS}
    for comp in components:
        kind = (
            "backbone"
            if issubclass(comp, Backbone)
            else "adapter"
            if issubclass(comp, Adapter)
            else "task"
            if issubclass(comp, Task)
            else None
        )
        if kind is None:
            raise TypeError(f"{comp!r} is not a Backbone, Adapter or Task subclass")
        groups[kind].append(comp)
    ns = SimpleNamespace()
    for kind, classes in groups.items():
        if classes:

            def register(_classes: list[type] = classes) -> list[type]:
                return list(_classes)

            setattr(ns, _HOOKS[kind], hookimpl(register))
    return ns


def registry_with(
    *plugins: object, autoload: bool = False, local_plugins: Sequence[Path] = ()
) -> Registry:
    """A registry of the built-ins plus ``plugins``.

    Each item is a component class (wrapped with :func:`plugin_object`), a module or any object
    with ``@hookimpl`` functions, or a ``(name, object)`` pair. Entry points load only with
    ``autoload=True``, so tests do not depend on what else is installed.
    """
    from sctune.core.manager import get_plugin_manager
    from sctune.core.registry import Registry

    extra: list[tuple[str, object]] = []
    for i, item in enumerate(plugins):
        if isinstance(item, tuple):
            extra.append(item)
        elif isinstance(item, type):
            extra.append((f"test_{getattr(item, 'name', i)}", plugin_object(item)))
        else:
            extra.append((getattr(item, "__name__", f"test_plugin_{i}"), item))
    pm = get_plugin_manager(
        autoload=autoload, local_plugins=list(local_plugins), extra_modules=extra
    )
    return Registry.build(pm)


def adata_genes(path: Path) -> list[str]:
    """The ``var_names`` of an ``.h5ad`` file (read without loading X)."""
    import anndata as ad

    return [str(g) for g in ad.read_h5ad(path, backed="r").var_names]


LIGHT_TASK_OPTIONS: dict[str, str] = {
    "min_class_cells": "1",
    "n_hvg": "50",
    "references": "[]",
    "kbet": "false",
}
"""Cheap settings of task options, applied by :func:`light_task_overrides` where a task has them."""


def light_task_overrides(registry: Registry, recipe: Any) -> list[str]:
    """``task.<key>=<value>`` overrides that make ``recipe``'s task cheap for a test (tiny classes
    allowed, few HVGs, no reference embeddings, no kBET), for the options its config has."""
    from sctune import api

    name = api.load(recipe, registry=registry).task.name
    fields = registry.get("task", name).cls.config_cls.model_fields
    return [f"task.{k}={v}" for k, v in LIGHT_TASK_OPTIONS.items() if k in fields]


def example_recipe(
    registry: Registry,
    backbone: str,
    adapter: str | Iterable[str],
    workdir: Path,
    data: Path,
    *,
    task: str = "cell_type",
    epochs: int = 1,
    batch_size: int = 16,
    plots: bool = False,
    out: Path | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe dict: a tiny ``example_config`` instance of ``backbone`` with ``adapter`` on ``data``.

    Raises ``NotImplementedError`` when the backbone has no ``example_config``. ``options`` are
    extra backbone options (validated by the backbone's config class).
    """
    bcls = registry.get("backbone", backbone).cls
    workdir = Path(workdir)
    bdir = workdir / f"backbone_{backbone}"
    bdir.mkdir(parents=True, exist_ok=True)
    bopts = dict(bcls.example_config(bdir, adata_genes(data)))
    bopts.update(options or {})
    names = [adapter] if isinstance(adapter, str) else list(adapter)
    adapters = [{"name": n} for n in names]
    return {
        "sctune": 1,
        "name": f"{backbone}-{'+'.join(names)}",
        "seed": 0,
        "data": {
            "path": str(data),
            "label_column": LABEL_COLUMN,
            "split": {"method": "stratified", "valid": 0.15, "test": 0.25},
        },
        "backbone": {"name": backbone, **bopts},
        "adapter": adapters[0] if len(adapters) == 1 else adapters,
        "task": {"name": task, **({"umap": plots} if task == "cell_type" else {})},
        "trainer": {
            "epochs": epochs,
            "batch_size": batch_size,
            "eval_batch_size": 64,
            "device": "cpu",
            "early_stopping": None,
            "optimizer": {"name": "adam", "lr": 1.0e-3},
        },
        "output": {"dir": str(out or workdir / "run"), "plots": plots, "overwrite": True},
    }


def tiny_expression(n_cells: int = 24, *, n_genes: int | None = 200, seed: int = 0) -> Expression:
    """The :class:`~sctune.core.cells.Expression` the engine would hand a backbone for
    :func:`tiny_adata` (raw counts, ``n_genes`` most detected genes, ``var_names`` as ids)."""
    from scipy import sparse

    from sctune.core.cells import Expression
    from sctune.core.data import detect_kind

    adata = tiny_adata(n_cells, n_genes=n_genes, seed=seed, min_per_class=1)
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    return Expression(
        X=X,
        genes=tuple(map(str, adata.var_names)),
        kind=detect_kind(X),
        library_size=adata.obs["n_counts"].to_numpy(dtype=np.float64),
        cell_ids=tuple(map(str, adata.obs_names)),
    )


@dataclass
class ExampleBackbone:
    """A tiny built backbone (from :meth:`Backbone.example_config`) ready for adapter tests.

    ``module`` is frozen (no parameter requires grad) and in eval mode; ``batch`` is the collated
    tokens of ``expression``'s first cells.
    """

    plugin: Backbone
    config: PluginConfig
    module: nn.Module
    expression: Expression
    tokens: TokenizedCells
    batch: dict[str, torch.Tensor]

    def surfaces(self) -> Surfaces:
        """``plugin.surfaces(module)``: the insertion points of this module."""
        return self.plugin.surfaces(self.module)


def example_backbone(
    cls: type[Backbone],
    workdir: Path,
    *,
    n_cells: int = 8,
    expression: Expression | None = None,
    seed: int = 0,
) -> ExampleBackbone:
    """Build ``cls``'s ``example_config`` instance the way a run does, on tiny data.

    ``example_config`` (written into ``workdir``), validated by ``config_cls``, then ``resolve``
    (with the cells as training expression), ``build``, frozen, eval mode; the first ``n_cells``
    cells of ``expression`` (default :func:`tiny_expression`) tokenized and collated. Raises
    ``NotImplementedError`` when the backbone has no ``example_config``.
    """
    import torch

    expr = expression if expression is not None else tiny_expression()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    plugin = cls()
    options = dict(cls.example_config(workdir, list(expr.genes)))
    config = cls.config_cls(**options)
    config = plugin.resolve(config, genes=list(expr.genes), run_dir=workdir, expression=expr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = plugin.build(config)
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    tokens = plugin.tokenize(expr, config, seed=seed)
    idx = list(range(min(n_cells, len(tokens))))
    batch = tokens.collate([tokens[i] for i in idx])
    return ExampleBackbone(plugin, config, module, expr, tokens, batch)


# --------------------------------------------------------------------------- a toy backbone


def _toy_config_cls() -> type:
    from pydantic import Field

    from sctune.core.config import PluginConfig

    class ToyConfig(PluginConfig):
        """Options of the ``toy`` test backbone."""

        genes_file: str | None = Field(
            None, description="text file, one gene per line (the vocabulary)"
        )
        hidden: int = Field(16, ge=2, description="embedding width")
        seed: int = Field(0, description="seed of the random (frozen) weights")

    return ToyConfig


def _make_toy() -> type:
    from sctune.core.backbone import Backbone
    from sctune.core.capabilities import Capability

    class _ToyBackbone(Backbone):
        """A mean-of-embeddings encoder with only two insertion points, for tests.

        Provides ``input_embedding`` and ``attention_output`` (one block), nothing else, so some
        adapters fit and others must be refused.
        """

        name = "toy"
        config_cls = _toy_config_cls()
        provides = frozenset(
            {
                Capability.INPUT_EMBEDDING,
                Capability.ATTENTION_OUTPUT,
                Capability.MASKED_MODELLING,
            }
        )
        description = "test backbone: gene + value embeddings, one MLP block, masked mean"
        licence = "MIT"

        def masked_modelling(self, module: Any, config: Any) -> Any:
            return toy_masked_values(module.hidden_size)

        @staticmethod
        def _genes(config: Any) -> list[str]:
            from sctune.core.errors import CheckpointError

            if config.genes_file is None or not Path(config.genes_file).is_file():
                raise CheckpointError(
                    f"backbone 'toy': genes_file '{config.genes_file}' not found"
                )
            return Path(config.genes_file).read_text().split()

        def build(self, config: Any, *, load_weights: bool = True) -> Any:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                return _toy_module()(len(self._genes(config)), config.hidden)

        def gene_match(self, genes: Sequence[str], config: Any) -> Any:
            from sctune.core.cells import GeneMatch

            vocab = set(self._genes(config))
            n = sum(1 for g in genes if g in vocab)
            return GeneMatch(len(genes), n, len(vocab), "symbol")

        def tokenize(self, expr: Any, config: Any, *, seed: int) -> Any:
            import torch

            from sctune.core.cells import TokenizedCells
            from sctune.core.errors import DataError

            index = {g: i + 1 for i, g in enumerate(self._genes(config))}
            cols = np.array([index.get(g, 0) for g in expr.genes])
            if not (cols > 0).any():
                raise DataError("backbone 'toy': no gene of the data is in its vocabulary")
            ids, values = [], []
            X = expr.X.tocsr()
            for r in range(X.shape[0]):
                row = X.indices[X.indptr[r] : X.indptr[r + 1]]
                val = X.data[X.indptr[r] : X.indptr[r + 1]]
                keep = cols[row] > 0
                ids.append(np.concatenate([[0], cols[row][keep]]).astype(np.int64))
                values.append(np.concatenate([[0.0], np.log1p(val[keep])]).astype(np.float32))
            return TokenizedCells(
                fields={"gene_ids": ids, "values": values},
                pad_values={"gene_ids": 0, "values": 0.0},
                dtypes={"gene_ids": torch.long, "values": torch.float32},
                gene_match=self.gene_match(expr.genes, config),
            )

        def surfaces(self, module: Any) -> Any:
            from sctune.core.surfaces import BlockSurfaces, Surfaces

            return Surfaces(
                hidden_size=module.hidden_size,
                input_embedding=module.input_slot,
                blocks=(BlockSurfaces(attention_output=module.block_slot),),
            )

        def resolve(
            self,
            config: Any,
            *,
            genes: Sequence[str],
            run_dir: Path,
            expression: Any = None,
        ) -> Any:
            if config.genes_file is not None:
                return config
            path = Path(run_dir) / "toy_genes.txt"
            path.write_text("\n".join(dict.fromkeys(map(str, genes))) + "\n")
            return config.model_copy(update={"genes_file": str(path)})

        @classmethod
        def example_config(cls, workdir: Path, genes: Sequence[str]) -> dict[str, object]:
            path = Path(workdir) / "toy_genes.txt"
            path.write_text("\n".join(dict.fromkeys(map(str, genes))) + "\n")
            return {"genes_file": str(path), "hidden": 16}

        def fingerprint(self, config: Any) -> dict[str, str]:
            from sctune.core.artifacts import sha256_file

            ok = config.genes_file and Path(config.genes_file).is_file()
            return {"genes_file": sha256_file(Path(config.genes_file))} if ok else {}

    _ToyBackbone.__module__ = __name__
    _ToyBackbone.__qualname__ = "ToyBackbone"
    return _ToyBackbone


def toy_masked_values(hidden: int, *, field: str = "values", seed: int = 0) -> Any:
    """A masked-modelling objective for tests: mask ``field`` (float, ``(B, L)``) with 0 at
    random non-padding positions after the first, predict it with one linear layer (MSE).

    The ``toy`` backbone returns it from ``masked_modelling``; :func:`check_task` uses it to drive
    task heads that train a masked objective without a real backbone."""
    import torch
    from torch import nn

    from sctune.core.objective import Masked, MaskedModelling, draw_positions

    class ToyMaskedValues(MaskedModelling):
        kind = "regression"
        default_ratio = 0.3
        description = f"masked '{field}' (set to 0), MSE from a linear decoder"

        def __init__(self) -> None:
            super().__init__()
            self.decoder = nn.Linear(hidden, 1)

        def mask(self, batch: Any, ratio: float, generator: Any) -> Masked:
            values = batch[field]
            pad = batch.get("padding_mask")
            eligible = torch.ones_like(values, dtype=torch.bool)
            if pad is not None:
                eligible &= ~pad.bool()
            eligible[:, 0] = False
            positions = draw_positions(eligible, ratio, generator)
            out = dict(batch)
            out[field] = values.masked_fill(positions, 0.0)
            return Masked(out, positions, values.float())

        def decode(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.decoder(tokens).squeeze(-1)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyMaskedValues()


def _toy_module() -> type:
    import torch
    from torch import nn

    from sctune.core.cells import EncoderOutput
    from sctune.core.surfaces import TransformSlot

    class ToyEncoder(nn.Module):
        def __init__(self, n_genes: int, hidden: int) -> None:
            super().__init__()
            self.hidden_size = hidden
            self.gene = nn.Embedding(n_genes + 1, hidden, padding_idx=0)
            self.value = nn.Linear(1, hidden)
            self.input_slot = TransformSlot()
            self.mix = nn.Linear(hidden, hidden)
            self.block_slot = TransformSlot()

        def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
            h = self.gene(batch["gene_ids"]) + self.value(batch["values"].unsqueeze(-1))
            h = self.input_slot(h)
            h = self.block_slot(h + torch.relu(self.mix(h)))
            keep = (~batch["padding_mask"]).unsqueeze(-1).to(h.dtype)
            cell = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
            return EncoderOutput(cell=cell, tokens=h, padding_mask=batch["padding_mask"])

    return ToyEncoder


def reference_scgpt_class() -> type | None:
    """scGPT 0.2.4's ``TransformerModel`` (the test oracle), or ``None`` when not installed.

    ``import scgpt`` is broken on current torch (torchtext), so only ``scgpt/model/model.py`` is
    imported, behind placeholder package modules that are removed again afterwards
    (install with ``pip install --no-deps scgpt==0.2.4``).
    """
    import importlib
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("scgpt")
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(spec.submodule_search_locations[0])
    saved = {k: v for k, v in sys.modules.items() if k == "scgpt" or k.startswith("scgpt.")}
    for name, sub in (("scgpt", base), ("scgpt.model", base / "model")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(sub)]
        sys.modules[name] = stub
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("scgpt.model.model").TransformerModel
    finally:
        for k in [k for k in sys.modules if k == "scgpt" or k.startswith("scgpt.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def reference_scgpt_model(
    cls: type, vocab: dict[str, int], *, nlayers: int = 2, seed: int = 0
) -> Any:
    """A tiny reference ``TransformerModel`` (32 dims, 4 heads, d_hid 64) in eval mode, built as
    backbones.md 1.5 says, with non-trivial LayerNorms and biases so parity checks bite."""
    import torch

    torch.manual_seed(seed)
    ref = cls(
        len(vocab),
        32,
        4,
        64,
        nlayers,
        nlayers_cls=3,
        n_cls=1,
        vocab={"<pad>": vocab["<pad>"]},
        dropout=0.0,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=True,
        input_emb_style="continuous",
        use_fast_transformer=False,
    )
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return ref.eval()


# --------------------------------------------------------------------------- a toy task


def _make_toy_regression() -> type:
    import numpy as np
    from pydantic import Field

    from sctune.core.config import PluginConfig
    from sctune.core.errors import DataError
    from sctune.core.task import Direction, Preflight, Task

    class ToyRegressionConfig(PluginConfig):
        """Options of the ``toy_regression`` test task."""

        column: str = Field("n_genes", description="numeric adata.obs column to predict")

    class _ToyRegressionTask(Task):
        """Predict log1p of a numeric obs column from the cell embedding (not a classifier).

        A test task that exercises everything the engine must not assume about classification:
        float targets, its own obs column, MSE, metrics to minimise, its own output column.
        """

        name = "toy_regression"
        config_cls = ToyRegressionConfig
        description = "test task: regress log1p(obs[column]) on the cell embedding"
        monitors: ClassVar[dict[str, Direction]] = {"valid/mse": "min", "valid/r2": "max"}

        def _values(self, obs: Any, config: Any) -> np.ndarray:
            if obs is None or config.column not in obs.columns:
                raise DataError(f"task.column: obs column '{config.column}' not found")
            return np.log1p(obs[config.column].to_numpy(dtype=np.float64))

        def preflight(self, labels: Any, split: Any, config: Any, *, obs: Any = None) -> Preflight:
            return Preflight(info=[f"regressing log1p(obs['{config.column}'])"])

        def prepare(
            self, labels: Any, split: Any, config: Any, *, obs: Any = None, expression: Any = None
        ) -> Any:
            y = self._values(obs, config)[split["train"]]
            return {"column": config.column, "mean": float(y.mean()), "std": float(y.std() or 1)}

        def targets(
            self, labels: Any, prepared: Any, *, obs: Any = None, expression: Any = None
        ) -> Any:
            cfg = ToyRegressionConfig(column=prepared["column"])
            y = (self._values(obs, cfg) - prepared["mean"]) / prepared["std"]
            return y.astype(np.float32)

        def head(self, hidden_size: int, prepared: Any, config: Any) -> Any:
            from torch import nn

            return nn.Linear(hidden_size, 1)

        def loss(self, logits: Any, targets: Any, prepared: Any, config: Any) -> Any:
            import torch.nn.functional as F

            return F.mse_loss(logits[:, 0].float(), targets.float())

        def _scores(self, logits: Any, targets: Any) -> dict[str, float]:
            from sklearn.metrics import mean_squared_error, r2_score

            pred = logits[:, 0]
            r2 = float(r2_score(targets, pred)) if len(targets) > 1 else 0.0
            return {"mse": float(mean_squared_error(targets, pred)), "r2": r2}

        def validation_metrics(self, logits: Any, targets: Any, prepared: Any, config: Any) -> Any:
            return self._scores(logits, targets)

        def evaluate(
            self,
            *,
            logits: Any,
            targets: Any,
            embeddings: Any,
            prepared: Any,
            config: Any,
            out_dir: Any,
        ) -> dict[str, Any]:
            return self._scores(logits, targets)

        def annotate(self, logits: Any, prepared: Any) -> dict[str, Any]:
            value = np.expm1(logits[:, 0] * prepared["std"] + prepared["mean"])
            return {"sctune_value": value.astype(np.float32)}

        def summary(self, metrics: dict[str, Any]) -> str:
            return f"mse {metrics['mse']:.4f}  r2 {metrics['r2']:.4f}"

        def state(self, prepared: Any) -> dict[str, Any]:
            return dict(prepared)

        def from_state(self, state: dict[str, Any]) -> Any:
            return dict(state)

    return _ToyRegressionTask


_LAZY = {"ToyBackbone": _make_toy, "ToyRegressionTask": _make_toy_regression}


def __getattr__(name: str) -> Any:
    """``ToyBackbone`` and ``ToyRegressionTask`` are built on first use (keeps this module
    torch-free)."""
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
