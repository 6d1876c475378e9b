"""Geneformer backbone (ctheodoris/Geneformer, Apache-2.0) on transformers' BERT.

Heavy imports (torch, transformers, numpy) happen inside the methods so that listing plugins
stays cheap. See ``docs/backbones/geneformer.md`` for formats and adapter placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sctune import hookimpl
from sctune.backbones.geneformer.config import GeneformerConfig
from sctune.core.backbone import Backbone
from sctune.core.capabilities import Capability
from sctune.core.errors import CheckpointError, DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sctune.core.cells import Expression, GeneMatch, TokenizedCells
    from sctune.core.objective import MaskedModelling
    from sctune.core.surfaces import Surfaces

NOTES = {
    "input_embedding": "after bert.embeddings (word + position + token-type, LayerNorm, dropout), "
    "before layer 0",
    "token_stream": "right after the input_embedding slot (the same summed embeddings, after "
    "that slot's adapters), before prompts and layer 0",
    "attention_output": "per layer, on the attention sub-block output after BertSelfOutput's "
    "LayerNorm; the FFN then reads the transformed stream",
    "ffn_parallel": "per layer, a branch fed with the attention output, added after the layer's "
    "output LayerNorm (BertOutput)",
    "projections": "per layer: q/k/v = attention.self.{query,key,value}, o = attention.output.dense, "
    "ffn_in = intermediate.dense, ffn_out = output.dense (all plain nn.Linear)",
    "prompt_tokens": "per layer before attention, inserted at position 1: after '<cls>' in V2, "
    "after the top-ranked gene in V1 (as scPEFT); stripped after the last layer",
}


class GeneformerBackbone(Backbone):
    """Geneformer V1/V2 (BERT over rank-ordered Ensembl gene tokens)."""

    name = "geneformer"
    config_cls = GeneformerConfig
    provides = frozenset(Capability)
    parameter_free_options = {"pooling": "mean"}
    description = "Geneformer V1/V2: HF BERT over rank-value gene tokens (mean-pooled cells)"
    licence = "Apache-2.0 (ctheodoris/Geneformer; tokenizer reimplemented)"

    def bert_config(self, config: GeneformerConfig) -> object:
        """The ``BertConfig`` to build (checkpoint, model_config or inline sizes)."""
        from sctune.backbones.geneformer import weights

        if config.checkpoint:
            return weights.read_bert_config(config.checkpoint)
        if config.model_config_path:
            return weights.read_bert_config(config.model_config_path)
        sizes = {
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "intermediate_size": config.intermediate_size,
            "max_position_embeddings": config.max_position_embeddings,
        }
        return weights.inline_bert_config(sizes, vocab_size=25426)

    def parameter_count(self, config: GeneformerConfig, *, mlm_head: bool = True) -> int:
        """Parameters of this shape on the meta device; with the MLM head by default, which gives
        the published counts (10,288,722 for V1-10M). For ``sctune inspect``."""
        from sctune.backbones.geneformer.weights import count_parameters

        return count_parameters(self.bert_config(config), mlm_head=mlm_head)

    def masked_modelling(self, module: nn.Module, config: GeneformerConfig) -> MaskedModelling:
        from sctune.backbones.geneformer import weights
        from sctune.backbones.geneformer.dictionaries import load_token_dictionary
        from sctune.backbones.geneformer.objective import GeneformerMaskedTokens

        if not config.token_dictionary:
            raise CheckpointError("masked-token prediction needs backbone.token_dictionary")
        tokens = load_token_dictionary(config.token_dictionary)
        if "<mask>" not in tokens:
            raise CheckpointError(
                f"geneformer token dictionary '{config.token_dictionary}' has no '<mask>' token",
                hint="Geneformer token dictionaries start with '<pad>' = 0 and '<mask>' = 1",
            )
        specials = [v for k, v in tokens.items() if k.startswith("<") and k.endswith(">")]
        objective = GeneformerMaskedTokens(
            module.bert.config,
            pad_id=tokens["<pad>"],
            mask_id=tokens["<mask>"],
            special_ids=tuple(module.special_ids),
            first_gene_id=max(specials) + 1,
        )
        loaded = False
        if config.checkpoint:
            state = weights.read_state_dict(weights.weight_file(config.checkpoint))
            loaded = objective.load(state)
        if not loaded:
            objective.tie_to(module.bert.embeddings.word_embeddings.weight.detach())
        objective.loaded_from_checkpoint = loaded
        return objective.to(module.bert.embeddings.word_embeddings.weight.device)

    def export_checkpoint(
        self,
        state: dict[str, torch.Tensor],
        config: GeneformerConfig,
        out_dir: Path,
        *,
        decoder: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """A ``BertForMaskedLM`` folder (config.json + model.safetensors, ``cls.predictions``
        included) plus the token and median dictionaries as JSON."""
        import json
        import shutil

        from safetensors.torch import save_file

        from sctune.backbones.geneformer.dictionaries import dictionary_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.bert_config(config).to_dict()  # type: ignore[attr-defined]
        emb = state["bert.embeddings.word_embeddings.weight"]
        cfg.update(vocab_size=int(emb.shape[0]), architectures=["BertForMaskedLM"])
        cfg.pop("_attn_implementation_autoset", None)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        tensors = {
            k: v.detach().cpu().contiguous()
            for k, v in {**state, **(decoder or {})}.items()
            if k.startswith(("bert.", "cls.")) and k != "bert.embeddings.position_ids"
        }
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        options: dict[str, Any] = {"checkpoint": str(out_dir)}
        for key in ("token_dictionary", "gene_median_dictionary", "gene_name_id_dict"):
            path = getattr(config, key)
            src = dictionary_file(path, key) if path else None
            if src is not None and Path(src).is_file():
                dest = out_dir / Path(src).name
                shutil.copyfile(src, dest)
                options[key] = str(dest)
        options["pooling"] = config.pooling  # the cell embedding it was trained with (GEPC)
        return options

    def reference_parameter_count(self, config: GeneformerConfig) -> int | None:
        return self.parameter_count(config, mlm_head=True)

    def build(self, config: GeneformerConfig, *, load_weights: bool = True) -> nn.Module:
        from sctune.backbones.geneformer import weights
        from sctune.backbones.geneformer.dictionaries import load_token_dictionary
        from sctune.backbones.geneformer.model import GeneformerEncoder

        bert_cfg = self.bert_config(config)
        deviations = weights.finish_config(
            bert_cfg,
            attention_dropout=config.attention_dropout,
            hidden_dropout=config.hidden_dropout,
        )
        special_ids: tuple[int, ...] = ()
        if config.token_dictionary:
            tokens = load_token_dictionary(config.token_dictionary)
            top = max(tokens.values())
            if config.random_init and top + 1 != bert_cfg.vocab_size:
                deviations["vocab_size"] = {"config": bert_cfg.vocab_size, "used": top + 1}
                bert_cfg.vocab_size = top + 1
            elif top >= bert_cfg.vocab_size:
                raise CheckpointError(
                    f"token dictionary '{config.token_dictionary}' has ids up to {top}, but the "
                    f"model has {bert_cfg.vocab_size} token embeddings",
                    hint="use the dictionaries that were shipped with this checkpoint",
                )
            if config.version != "v1" and "<cls>" in tokens and "<eos>" in tokens:
                special_ids = (tokens["<cls>"], tokens["<eos>"])
        module = GeneformerEncoder(bert_cfg, pooling=config.pooling, special_ids=special_ids)
        report = weights.LoadReport(deviations=deviations, source="random init")
        if load_weights and config.checkpoint:
            path = weights.weight_file(config.checkpoint)
            report.update(weights.load_into(module, weights.read_state_dict(path), str(path)))
        module.load_report = report
        return module

    def gene_match(self, genes: Sequence[str], config: GeneformerConfig) -> GeneMatch:
        from sctune.backbones.geneformer.tokenizer import load_vocab, map_columns
        from sctune.core.cells import GeneMatch, looks_like_ensembl

        if config.random_init and not config.token_dictionary:
            n = len(set(genes))
            return GeneMatch(
                n_genes=len(genes),
                n_matched=len(genes),
                vocabulary_size=n + 2,
                namespace="ensembl" if looks_like_ensembl(genes) else "symbol",
                via="a vocabulary derived from the data (random init)",
            )
        return map_columns(genes, load_vocab(config)).match

    def tokenize(self, expr: Expression, config: GeneformerConfig, *, seed: int) -> TokenizedCells:
        import numpy as np
        import torch

        from sctune.backbones.geneformer.tokenizer import (
            load_vocab,
            map_columns,
            rank_tokens,
            require_match,
        )
        from sctune.core.cells import TokenizedCells

        n_positions = getattr(self.bert_config(config), "max_position_embeddings", None)
        vocab = load_vocab(config, n_positions)
        X, library = expr.X, expr.library_size
        if expr.kind == "lognorm" and config.allow_lognorm:
            X = X.copy().astype(np.float64)
            X.data = np.expm1(X.data)
            library = np.asarray(X.sum(axis=1)).reshape(-1)  # ranks ignore per-cell scale
        elif expr.kind != "counts":
            raise DataError(
                f"backbone 'geneformer' needs raw counts, but the expression is '{expr.kind}'",
                hint="point data at the counts (a layer or .raw), or set backbone.allow_lognorm "
                "to rank expm1 of log-normalised values (an approximation)"
                if expr.kind == "lognorm"
                else "scaled values cannot be rank-encoded; use counts",
            )
        if library is None:
            library = np.asarray(X.sum(axis=1)).reshape(-1)
        cmap = map_columns(expr.genes, vocab, gene_ids=expr.gene_ids)
        require_match(cmap.match, expr.genes, config.min_gene_match)
        pieces = rank_tokens(X, library, cmap.ensembl, vocab)
        empty = [
            expr.cell_ids[i] for i, p in enumerate(pieces) if len(p) == (2 if vocab.special else 0)
        ]
        if empty:
            raise DataError(
                f"backbone 'geneformer': {len(empty):,} cells express no gene of the vocabulary "
                f"(e.g. {', '.join(repr(c) for c in empty[:3])})",
                hint="filter empty cells (e.g. sc.pp.filter_cells(adata, min_genes=1)) first",
            )
        return TokenizedCells(
            fields={"input_ids": pieces},
            pad_values={"input_ids": vocab.pad_id},
            dtypes={"input_ids": torch.long},
            gene_match=cmap.match,
            meta={
                "version": "v2" if vocab.special else "v1",
                "max_input_size": vocab.max_input_size,
                "lognorm_approximation": expr.kind == "lognorm",
            },
        )

    def surfaces(self, module: nn.Module) -> Surfaces:
        from sctune.core.surfaces import BlockSurfaces, ProjectionSite, Surfaces

        blocks = []
        for layer, slots in zip(module.bert.encoder.layer, module.blocks):
            projections = {
                "q": ProjectionSite(layer.attention.self, "query"),
                "k": ProjectionSite(layer.attention.self, "key"),
                "v": ProjectionSite(layer.attention.self, "value"),
                "o": ProjectionSite(layer.attention.output, "dense"),
                "ffn_in": ProjectionSite(layer.intermediate, "dense"),
                "ffn_out": ProjectionSite(layer.output, "dense"),
            }
            blocks.append(
                BlockSurfaces(
                    attention_output=slots.attention_slot,
                    ffn_parallel=slots.ffn_parallel,
                    projections=projections,
                    prompt=slots.prompt,
                )
            )
        return Surfaces(
            hidden_size=module.hidden_size,
            input_embedding=module.input_slot,
            blocks=tuple(blocks),
            notes=dict(NOTES),
            token_stream=module.stream_slot,
        )

    def resolve(
        self,
        config: GeneformerConfig,
        *,
        genes: Sequence[str],
        run_dir: Path,
        expression: Expression | None = None,
    ) -> GeneformerConfig:
        from sctune.backbones.geneformer.resolve import derive_dictionaries

        if not config.random_init or (config.token_dictionary and config.gene_median_dictionary):
            return config
        update = derive_dictionaries(config, genes, Path(run_dir), expression=expression)
        return config.model_copy(update=update)

    @classmethod
    def example_config(cls, workdir: Path, genes: Sequence[str]) -> dict[str, object]:
        from sctune.backbones.geneformer.resolve import write_example

        return write_example(Path(workdir), genes)

    def fingerprint(self, config: GeneformerConfig) -> dict[str, str]:
        from sctune.backbones.geneformer.dictionaries import dictionary_file
        from sctune.backbones.geneformer.weights import weight_file
        from sctune.core.artifacts import sha256_file as sha256

        out = {}
        if config.checkpoint:
            out["checkpoint"] = sha256(weight_file(config.checkpoint))
            out["config.json"] = sha256(Path(config.checkpoint).expanduser() / "config.json")
        for key in (
            "model_config_path",
            "token_dictionary",
            "gene_median_dictionary",
            "gene_name_id_dict",
            "ensembl_mapping_dict",
        ):
            path = getattr(config, key)
            file = dictionary_file(path, key) if path else None  # builtin:v1 -> packaged file
            if file is not None and file.is_file():
                out[key.replace("_path", "")] = sha256(file)
        return out

    def check(self, config: GeneformerConfig) -> list[tuple[str, str]]:
        from sctune.backbones.geneformer.dictionaries import dictionary_file
        from sctune.backbones.geneformer.weights import WEIGHT_FILES

        problems = []
        if config.checkpoint:
            folder = Path(config.checkpoint).expanduser()
            if not folder.is_dir():
                problems.append(("backbone.checkpoint", f"folder '{folder}' does not exist"))
            else:
                if not (folder / "config.json").is_file():
                    problems.append(("backbone.checkpoint", f"'{folder}' has no config.json"))
                if not any((folder / w).is_file() for w in WEIGHT_FILES):
                    problems.append(
                        (
                            "backbone.checkpoint",
                            f"'{folder}' has none of {', '.join(WEIGHT_FILES)}",
                        )
                    )
            for key in ("token_dictionary", "gene_median_dictionary"):
                if not getattr(config, key):
                    problems.append((f"backbone.{key}", "required with a pretrained checkpoint"))
        files = {
            "model_config": config.model_config_path,
            **{
                k: getattr(config, k)
                for k in (
                    "token_dictionary",
                    "gene_median_dictionary",
                    "gene_name_id_dict",
                    "ensembl_mapping_dict",
                )
            },
        }
        for key, path in files.items():
            if path and not dictionary_file(path, key).is_file():
                problems.append((f"backbone.{key}", f"file '{path}' does not exist"))
        return problems


@hookimpl
def sctune_register_backbones() -> list[type[Backbone]]:
    """Register the Geneformer backbone."""
    return [GeneformerBackbone]
