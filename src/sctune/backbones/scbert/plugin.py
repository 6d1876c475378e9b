"""Plugin entry for the ``scbert`` backbone (torch is imported only inside the methods)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sctune import hookimpl
from sctune.backbones.scbert.config import ScBERTConfig
from sctune.core.artifacts import sha256_file
from sctune.core.backbone import Backbone
from sctune.core.capabilities import Capability
from sctune.core.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sctune.core.cells import Expression, GeneMatch, TokenizedCells
    from sctune.core.config import PluginConfig
    from sctune.core.objective import MaskedModelling
    from sctune.core.surfaces import Surfaces

NOTES = {
    Capability.INPUT_EMBEDDING.value: "on token_emb + gene2vec position embedding, before the "
    "first Performer layer (scPEFT's scBERT token adapter)",
    Capability.TOKEN_STREAM.value: "right after the input_embedding slot (the same token_emb + "
    "gene2vec sum, after that slot's adapters), before prompts and the first Performer layer",
    Capability.ATTENTION_OUTPUT.value: "on each layer's attention branch Attn(LN(x)) before the "
    "residual add: x + slot(Attn(LN x)) (scPEFT: x + Adapter_S(Attn(x)))",
    Capability.FFN_PARALLEL.value: "branch fed with each layer's FFN sub-block input x, added to "
    "x + FF(LN x) (scPEFT's scBERT MLP adapter replaced the FFN residual instead)",
    Capability.PROJECTIONS.value: "q/k/v = to_q/to_k/to_v (640 wide, no bias), o = to_out, "
    "ffn_in = w1, ffn_out = w2",
    Capability.PROMPT_TOKENS.value: "prompts at position 0 of each layer input (no <cls>; FAVOR+ "
    "takes any length), stripped before pooling so the head sees only gene positions",
}


def _cfg(config: PluginConfig) -> ScBERTConfig:
    assert isinstance(config, ScBERTConfig)
    return config


def _unique(genes: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(str(g) for g in genes))


class ScBERTBackbone(Backbone):
    """scBERT: a Performer over all genes of a fixed order, gene identity = position."""

    name: ClassVar[str] = "scbert"
    config_cls: ClassVar[type[PluginConfig]] = ScBERTConfig
    provides: ClassVar[frozenset[Capability]] = frozenset(Capability)
    parameter_free_options: ClassVar[dict[str, object]] = {"pooling": "mean"}
    description: ClassVar[str] = (
        "scBERT (Performer, FAVOR+ attention, 6 x 200, 16,906 genes by position); "
        "pooling: scBERT's conv/fc1 stem or mean"
    )
    licence: ClassVar[str] = "GPL-3.0 original; sctune reimplements from the paper"

    def _n_genes(self, cfg: ScBERTConfig) -> int:
        import numpy as np

        from sctune.backbones.scbert.weights import read_checkpoint, read_gene_order

        if cfg.gene_order is not None:
            return len(read_gene_order(cfg.gene_order))
        if cfg.gene2vec is not None and Path(cfg.gene2vec).is_file():
            return int(np.load(cfg.gene2vec, mmap_mode="r").shape[0])
        if cfg.checkpoint is not None:
            state, _ = read_checkpoint(cfg.checkpoint)
            if "pos_emb.emb.weight" in state:
                return int(state["pos_emb.emb.weight"].shape[0]) - 1
        raise CheckpointError(
            "backbone 'scbert' cannot tell the number of genes: no 'gene_order', 'gene2vec' or "
            "checkpoint is given",
            hint="give backbone.gene_order (one symbol per line), or let the run resolve one",
        )

    def build(self, config: PluginConfig, *, load_weights: bool = True) -> nn.Module:
        import torch

        from sctune.backbones.scbert.model import ScBERTModel
        from sctune.backbones.scbert.weights import (
            load_state,
            read_checkpoint,
            read_gene2vec,
            set_gene2vec,
        )

        cfg = _cfg(config)
        n_genes = self._n_genes(cfg)
        kwargs = {
            "dim": cfg.dim,
            "depth": cfg.depth,
            "heads": cfg.heads,
            "dim_head": cfg.dim_head,
            "nb_features": cfg.nb_features,
            "pooling": cfg.pooling,
            "stem_hidden": cfg.stem_hidden,
            "stem_dropout": cfg.stem_dropout,
        }
        if not load_weights:
            with torch.device("meta"):
                return ScBERTModel(n_genes, **kwargs)
        model = ScBERTModel(n_genes, **kwargs)
        notes: list[str] = []
        model.load_report = None
        if cfg.checkpoint is not None:
            state, ignored = read_checkpoint(cfg.checkpoint)
            table = state.get("pos_emb.emb.weight")
            if table is not None and table.shape[0] != n_genes + 1:
                raise CheckpointError(
                    f"checkpoint '{cfg.checkpoint}' does not fit backbone 'scbert'\n"
                    f"  its position table 'pos_emb.emb.weight' has {table.shape[0]} rows, so it "
                    f"expects a gene order of {table.shape[0] - 1} genes; 'gene_order' has "
                    f"{n_genes}",
                    hint="give the gene order the checkpoint was trained with "
                    "(scBERT: the 16,906 var_names of 'panglao_10000.h5ad')",
                )
            report = load_state(model, state, source=str(cfg.checkpoint))
            if ignored:
                report.notes.append("ignored checkpoint entries: " + ", ".join(ignored))
            notes += report.notes
            model.load_report = report
        if cfg.gene2vec is not None:
            set_gene2vec(model, read_gene2vec(cfg.gene2vec, n_genes=n_genes, dim=cfg.dim))
        model.load_notes = tuple(notes)
        return model

    def reference_parameter_count(self, config: PluginConfig) -> int | None:
        """scBERT's PerformerLM of this shape (LM head included, sctune's pooling stem excluded):
        8,388,607 at the published size."""
        module = self.build(config, load_weights=False)  # meta device
        stem = sum(p.numel() for p in module.stem.parameters()) if module.stem is not None else 0
        return sum(p.numel() for p in module.parameters()) - stem

    def masked_modelling(self, module: nn.Module, config: PluginConfig) -> MaskedModelling:
        from sctune.backbones.scbert.objective import ScBERTMaskedBins

        objective = ScBERTMaskedBins(
            int(module.dim), int(module.n_genes), mask_unexpressed=_cfg(config).mask_unexpressed
        )
        objective.to_out.load_state_dict(module.to_out.state_dict())
        objective.loaded_from_checkpoint = _cfg(config).checkpoint is not None
        return objective.to(module.to_out.weight.device)

    def export_checkpoint(
        self,
        state: dict[str, torch.Tensor],
        config: PluginConfig,
        out_dir: Path,
        *,
        decoder: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """scBERT's ``{"model_state_dict": ...}`` .pth (LM head ``to_out`` from the decoder),
        plus the gene order and gene2vec files it needs."""
        import shutil

        import torch

        from sctune.backbones.scbert.weights import is_scbert_key

        cfg = _cfg(config)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().cpu().clone()
            for k, v in {**state, **(decoder or {})}.items()
            if is_scbert_key(k)
        }
        weights = out_dir / "scbert_pretrained.pth"
        torch.save({"model_state_dict": tensors}, weights)
        options: dict[str, Any] = {"checkpoint": str(weights)}
        options.update({k: getattr(cfg, k) for k in ("dim", "depth", "heads", "dim_head")})
        if cfg.pooling != "scbert":  # the parameter-free cell embedding it was trained with
            options["pooling"] = cfg.pooling  # (scBERT's stem is not written: no place for it)
        if cfg.nb_features is not None:
            options["nb_features"] = cfg.nb_features
        for key in ("gene_order", "gene2vec"):
            src = getattr(cfg, key)
            if src is not None and Path(src).is_file():
                dest = out_dir / Path(src).name
                shutil.copyfile(src, dest)
                options[key] = str(dest)
        return options

    def gene_match(self, genes: Sequence[str], config: PluginConfig) -> GeneMatch:
        from sctune.backbones.scbert.tokenizer import match_genes
        from sctune.backbones.scbert.weights import read_gene_order

        cfg = _cfg(config)
        if cfg.gene_order is None:
            return match_genes(genes, _unique(genes), via="the data's genes (random init)")
        return match_genes(genes, read_gene_order(cfg.gene_order), via="gene-order position")

    def tokenize(self, expr: Expression, config: PluginConfig, *, seed: int) -> TokenizedCells:
        from sctune.backbones.scbert.tokenizer import tokenize
        from sctune.backbones.scbert.weights import read_gene_order

        cfg = _cfg(config)
        order = _unique(expr.genes) if cfg.gene_order is None else read_gene_order(cfg.gene_order)
        return tokenize(expr, order, min_gene_match=cfg.min_gene_match, min_genes=cfg.min_genes)

    def surfaces(self, module: nn.Module) -> Surfaces:
        from sctune.core.surfaces import BlockSurfaces, ProjectionSite, Surfaces

        blocks = []
        for attn, ff in module.performer.net.layers:
            fn, mlp = attn.fn, ff.fn.fn
            projections = {
                "q": ProjectionSite(fn, "to_q"),
                "k": ProjectionSite(fn, "to_k"),
                "v": ProjectionSite(fn, "to_v"),
                "o": ProjectionSite(fn, "to_out"),
                "ffn_in": ProjectionSite(mlp, "w1"),
                "ffn_out": ProjectionSite(mlp, "w2"),
            }
            blocks.append(
                BlockSurfaces(
                    attention_output=attn.output_slot,
                    ffn_parallel=ff.parallel,
                    projections=projections,
                    prompt=attn.prompt,
                )
            )
        return Surfaces(
            hidden_size=module.dim,
            input_embedding=module.input_slot,
            blocks=tuple(blocks),
            notes=dict(NOTES),
            token_stream=module.stream_slot,
        )

    def resolve(
        self,
        config: PluginConfig,
        *,
        genes: Sequence[str],
        run_dir: Path,
        expression: Expression | None = None,
    ) -> PluginConfig:
        from sctune.backbones.scbert.weights import write_random_files

        cfg = _cfg(config)
        if cfg.checkpoint is not None:
            if cfg.gene_order is None:
                raise CheckpointError(
                    "backbone.gene_order: a scBERT checkpoint identifies genes by position, so it "
                    "needs the gene order it was trained with; none is given",
                    hint="give the 16,906-symbol order (var_names of 'panglao_10000.h5ad'), "
                    "one symbol per line",
                )
            return cfg
        from sctune.backbones.scbert.weights import read_gene_order

        order = _unique(genes) if cfg.gene_order is None else read_gene_order(cfg.gene_order)
        files = write_random_files(
            run_dir,
            order,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            dim_head=cfg.dim_head,
            nb_features=cfg.nb_features,
            seed=cfg.init_seed,
        )
        update: dict[str, object] = {"checkpoint": files["checkpoint"]}
        if cfg.gene_order is None:
            update["gene_order"] = files["gene_order"]
        if cfg.gene2vec is None:
            update["gene2vec"] = files["gene2vec"]
        return cfg.model_copy(update=update)

    @classmethod
    def example_config(cls, workdir: Path, genes: Sequence[str]) -> dict[str, object]:
        from sctune.backbones.scbert.weights import write_random_files

        sizes = {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8}
        files = write_random_files(
            workdir, _unique(genes), nb_features=None, seed=0, prefix="scbert_tiny", **sizes
        )
        return {**{k: str(v) for k, v in files.items()}, **sizes, "stem_hidden": 32}

    def fingerprint(self, config: PluginConfig) -> dict[str, str]:
        cfg = _cfg(config)
        files = {
            "checkpoint": cfg.checkpoint,
            "gene2vec": cfg.gene2vec,
            "gene_order": cfg.gene_order,
        }
        return {
            key: "sha256:" + sha256_file(Path(path))
            for key, path in files.items()
            if path is not None and Path(path).is_file()
        }

    def check(self, config: PluginConfig) -> list[tuple[str, str]]:
        cfg = _cfg(config)
        problems = []
        for key in ("checkpoint", "gene2vec", "gene_order"):
            path = getattr(cfg, key)
            if path is not None and not Path(path).is_file():
                problems.append((f"backbone.{key}", f"file '{path}' not found"))
        if cfg.checkpoint is not None and cfg.gene_order is None:
            problems.append(
                (
                    "backbone.gene_order",
                    (
                        "required with a checkpoint: scBERT identifies genes by position (give "
                        "the 16,906-symbol order of 'panglao_10000.h5ad', one per line)"
                    ),
                )
            )
        from sctune.backbones.scbert.weights import gene2vec_problem, read_gene_order

        n_genes = None
        if cfg.gene_order is not None and Path(cfg.gene_order).is_file():
            try:
                n_genes = len(read_gene_order(cfg.gene_order))
            except CheckpointError as exc:
                problems.append(("backbone.gene_order", exc.message.split(": ", 1)[-1]))
        if cfg.gene2vec is not None and Path(cfg.gene2vec).is_file():
            problem = gene2vec_problem(cfg.gene2vec, n_genes=n_genes, dim=cfg.dim)
            if problem:
                problems.append(("backbone.gene2vec", problem))
        return problems


@hookimpl
def sctune_register_backbones() -> list[type[Backbone]]:
    return [ScBERTBackbone]
