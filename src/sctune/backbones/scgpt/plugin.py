"""The ``scgpt`` backbone: scGPT's encoder (bowang-lab/scGPT, MIT), reimplemented for sctune.

Torch and the model code are imported inside the methods, so listing plugins stays cheap.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sctune import hookimpl
from sctune.backbones.scgpt.config import ARCH_FIELDS, ScGPTConfig
from sctune.core.artifacts import sha256_file
from sctune.core.backbone import Backbone
from sctune.core.capabilities import Capability
from sctune.core.errors import CheckpointError, SctuneWarning

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sctune.core.cells import Expression, GeneMatch, TokenizedCells
    from sctune.core.objective import MaskedModelling
    from sctune.core.surfaces import Surfaces

NOTES = {
    Capability.INPUT_EMBEDDING.value: "value encoder, between its LayerNorm and its dropout "
    "(scPEFT gene token prompt); the gene-id embedding is untouched",
    Capability.TOKEN_STREAM.value: "stream_slot, on gene-id + value embeddings (their sum), "
    "before prompts and layer 0: where scGPT's own DSBN sits",
    Capability.ATTENTION_OUTPUT.value: "each layer, on the stream right after norm1 "
    "(post-norm attention sub-block output, the FFN input)",
    Capability.FFN_PARALLEL.value: "each layer, branches fed with the FFN input and added after "
    "norm2 (scPEFT MLP adapter)",
    Capability.PROJECTIONS.value: "q/k/v are row slices of the packed self_attn.Wqkv "
    "(Linear(d, 3d), rows Q, K, V); o = self_attn.out_proj; ffn_in/ffn_out = linear1/linear2",
    Capability.PROMPT_TOKENS.value: "inserted after <cls> before each prompted layer, mask "
    "extended, stripped after the last layer",
}


class ScGPTBackbone(Backbone):
    """scGPT whole-human style encoder: binned expression, ``<cls>`` cell embedding."""

    name: ClassVar[str] = "scgpt"
    config_cls: ClassVar[type[ScGPTConfig]] = ScGPTConfig
    provides: ClassVar[frozenset[Capability]] = frozenset(Capability)
    description: ClassVar[str] = (
        "scGPT encoder (12 x 512 post-norm transformer, 51 expression bins, <cls> embedding)"
    )
    licence: ClassVar[str] = "MIT (architecture of bowang-lab/scGPT; reimplemented)"

    # ---- files ---------------------------------------------------------------------------
    @staticmethod
    def _vocab_path(config: ScGPTConfig) -> Path | None:
        if config.checkpoint is not None:
            return Path(config.checkpoint) / "vocab.json"
        return Path(config.vocab) if config.vocab is not None else None

    def _vocab(self, config: ScGPTConfig) -> dict[str, int]:
        from sctune.backbones.scgpt.weights import read_vocab

        path = self._vocab_path(config)
        if path is None:
            raise CheckpointError(
                "backbone 'scgpt' has neither 'checkpoint' nor 'vocab' set\n"
                "  set backbone.checkpoint to a scGPT folder, or backbone.vocab to a vocab.json "
                "(runs build one from the data in resolve())"
            )
        return read_vocab(path)

    def _arch(self, config: ScGPTConfig) -> dict[str, Any]:
        """Architecture and padding from args.json (checkpoint) or the config (random init)."""
        arch: dict[str, Any] = {k: getattr(config, k) for k in ARCH_FIELDS}
        arch.update(pad_token="<pad>", pad_value=-2.0, mask_value=-1.0)
        if config.checkpoint is None:
            return arch
        from sctune.backbones.scgpt.weights import read_args

        args = read_args(Path(config.checkpoint))
        clash = [
            f"backbone.{k}: the recipe says {v}, args.json says {args[k]}"
            for k, v in config.explicit_arch().items()
            if int(args[k]) != v
        ]
        if clash:
            raise CheckpointError(
                f"recipe disagrees with checkpoint '{config.checkpoint}'\n  "
                + "\n  ".join(clash)
                + "\n  remove these keys: a checkpoint's architecture comes from its args.json"
            )
        arch.update({k: int(args[k]) for k in ARCH_FIELDS})
        arch["pad_token"] = str(args.get("pad_token", "<pad>"))
        arch["pad_value"] = float(args.get("pad_value", -2))
        arch["mask_value"] = float(args.get("mask_value", -1))
        return arch

    def _value_style_clash(self, config: ScGPTConfig) -> str | None:
        """A note when the checkpoint's args.json records another ``input_style`` than
        ``value_style`` (``None`` when it agrees, records none, or there is no checkpoint)."""
        if config.checkpoint is None:
            return None
        from sctune.backbones.scgpt.weights import read_args

        recorded = read_args(Path(config.checkpoint)).get("input_style")
        if recorded is None or recorded == config.value_style:
            return None
        fix = (
            f"set backbone.value_style={recorded}"
            if recorded in ("binned", "log1p")
            else "sctune tokenises 'binned' or 'log1p' values only"
        )
        return (
            f"backbone 'scgpt': tokenising with value_style '{config.value_style}', but "
            f"checkpoint '{config.checkpoint}' was trained with input_style '{recorded}' "
            f"(args.json): the model sees expression values on a scale it was not trained on\n"
            f"  {fix}"
        )

    # ---- Backbone API ----------------------------------------------------------------------
    def build(self, config: ScGPTConfig, *, load_weights: bool = True) -> nn.Module:
        from sctune.backbones.scgpt.model import ScGPTEncoder
        from sctune.backbones.scgpt.weights import load_checkpoint, vocab_size

        arch = self._arch(config)
        vocab = self._vocab(config)
        if arch["pad_token"] not in vocab:
            raise CheckpointError(f"pad token '{arch['pad_token']}' is not in vocab.json")
        module = ScGPTEncoder(
            vocab_size(vocab),
            pad_id=vocab[arch["pad_token"]],
            embsize=arch["embsize"],
            nheads=arch["nheads"],
            d_hid=arch["d_hid"],
            nlayers=arch["nlayers"],
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            pooling=config.pooling,
        )
        module.load_report = None
        if load_weights and config.checkpoint is not None:
            module.load_report = load_checkpoint(
                module, Path(config.checkpoint), vocab_size(vocab)
            )
        return module

    def masked_modelling(self, module: nn.Module, config: ScGPTConfig) -> MaskedModelling:
        from sctune.backbones.scgpt.objective import ScGPTMaskedExpression
        from sctune.backbones.scgpt.weights import read_state

        arch = self._arch(config)
        objective = ScGPTMaskedExpression(
            int(module.hidden_size), pad_id=int(module.pad_id), mask_value=arch["mask_value"]
        )
        if config.checkpoint is not None:
            objective.loaded_from_checkpoint = objective.load(read_state(Path(config.checkpoint)))
        return objective.to(next(module.parameters()).device)

    def export_checkpoint(
        self,
        state: dict[str, torch.Tensor],
        config: ScGPTConfig,
        out_dir: Path,
        *,
        decoder: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """args.json + vocab.json + best_model.pt (flash attention key layout, decoder keys
        included), as scGPT's own training writes them."""
        from sctune.backbones.scgpt.weights import write_checkpoint

        arch = self._arch(config)
        args = {k: arch[k] for k in ARCH_FIELDS}
        args.update(
            pad_token=arch["pad_token"],
            pad_value=arch["pad_value"],
            mask_value=arch["mask_value"],
            n_bins=config.n_bins,
            input_style=config.value_style,
            input_emb_style="continuous",
            dropout=config.dropout,
        )
        write_checkpoint(out_dir, {**state, **(decoder or {})}, args, self._vocab(config))
        options: dict[str, Any] = {"checkpoint": str(Path(out_dir))}
        if config.value_style != "binned":  # loading it needs the style it was trained with
            options["value_style"] = config.value_style
        options["pooling"] = config.pooling  # the cell embedding it was trained with (GEPC)
        return options

    def reference_parameter_count(self, config: ScGPTConfig) -> int | None:
        """scGPT's TransformerModel of this shape without MVC and ClsDecoder: the encoder plus the
        expression decoder (ExprDecoder d->d->d->1: 525,825 at d=512); whole-human 50,804,225."""
        import torch

        with torch.device("meta"):
            module = self.build(config, load_weights=False)
        d = int(module.hidden_size)
        return sum(p.numel() for p in module.parameters()) + 2 * (d * d + d) + d + 1

    def gene_match(self, genes: Sequence[str], config: ScGPTConfig) -> GeneMatch:
        from sctune.backbones.scgpt.tokenizer import match_genes
        from sctune.core.cells import GeneMatch

        if self._vocab_path(config) is None:
            n = len(set(genes))
            return GeneMatch(len(genes), n, n, "symbol", via="vocabulary built from the data")
        return match_genes(genes, self._vocab(config))

    def tokenize(self, expr: Expression, config: ScGPTConfig, *, seed: int) -> TokenizedCells:
        from sctune.backbones.scgpt.tokenizer import tokenize

        arch = self._arch(config)
        clash = self._value_style_clash(config)
        if clash:
            warnings.warn(clash, SctuneWarning, stacklevel=2)
        return tokenize(
            expr,
            self._vocab(config),
            max_seq_len=config.max_seq_len,
            n_bins=config.n_bins,
            min_gene_match=config.min_gene_match,
            pad_value=arch["pad_value"],
            seed=seed,
            value_style=config.value_style,
        )

    def surfaces(self, module: nn.Module) -> Surfaces:
        from sctune.core.surfaces import BlockSurfaces, ProjectionSite, Surfaces

        d = module.hidden_size
        blocks = []
        for layer in module.transformer_encoder.layers:
            attn = layer.self_attn
            projections = {
                "q": ProjectionSite(attn, "Wqkv", slice(0, d)),
                "k": ProjectionSite(attn, "Wqkv", slice(d, 2 * d)),
                "v": ProjectionSite(attn, "Wqkv", slice(2 * d, 3 * d)),
                "o": ProjectionSite(attn, "out_proj"),
                "ffn_in": ProjectionSite(layer, "linear1"),
                "ffn_out": ProjectionSite(layer, "linear2"),
            }
            blocks.append(
                BlockSurfaces(
                    attention_output=layer.attention_slot,
                    ffn_parallel=layer.ffn_slot,
                    projections=projections,
                    prompt=layer.prompt_slot,
                )
            )
        return Surfaces(
            hidden_size=d,
            input_embedding=module.value_encoder.input_slot,
            blocks=tuple(blocks),
            notes=NOTES,
            token_stream=module.stream_slot,
        )

    def resolve(
        self,
        config: ScGPTConfig,
        *,
        genes: Sequence[str],
        run_dir: Path,
        expression: Expression | None = None,
    ) -> ScGPTConfig:
        if config.checkpoint is not None or config.vocab is not None:
            return config
        from sctune.backbones.scgpt.weights import SPECIALS

        vocab: dict[str, int] = {}
        for g in genes:
            vocab.setdefault(str(g), len(vocab))
        for tok in SPECIALS:
            vocab.setdefault(tok, len(vocab))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "vocab.json"
        path.write_text(json.dumps(vocab))
        return config.model_copy(update={"vocab": path})

    @classmethod
    def example_config(cls, workdir: Path, genes: Sequence[str]) -> dict[str, object]:
        import torch

        from sctune.backbones.scgpt.model import ScGPTEncoder
        from sctune.backbones.scgpt.weights import SPECIALS, write_checkpoint

        vocab: dict[str, int] = {}
        for g in genes:
            vocab.setdefault(str(g), len(vocab))
        for tok in SPECIALS:
            vocab.setdefault(tok, len(vocab))
        args = {
            "embsize": 32,
            "nheads": 4,
            "d_hid": 64,
            "nlayers": 2,
            "n_layers_cls": 3,
            "dropout": 0.0,
            "pad_token": "<pad>",
            "pad_value": -2,
            "n_bins": 51,
            "input_emb_style": "continuous",
            "MVC": True,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = ScGPTEncoder(
                len(vocab),
                pad_id=vocab["<pad>"],
                embsize=32,
                nheads=4,
                d_hid=64,
                nlayers=2,
                dropout=0.0,
            )
            state = dict(model.state_dict())
            for i in (0, 2):
                state[f"decoder.fc.{i}.weight"] = torch.randn(32, 32) * 0.1
                state[f"decoder.fc.{i}.bias"] = torch.zeros(32)
            state["decoder.fc.4.weight"] = torch.randn(1, 32) * 0.1
            state["decoder.fc.4.bias"] = torch.zeros(1)
            state["mvc_decoder.gene2query.weight"] = torch.randn(32, 32) * 0.1
            state["mvc_decoder.gene2query.bias"] = torch.zeros(32)
            state["mvc_decoder.W.weight"] = torch.randn(32, 32) * 0.1
        folder = write_checkpoint(Path(workdir) / "scgpt_tiny", state, args, vocab, layout="flash")
        return {"checkpoint": str(folder), "dropout": 0.0, "max_seq_len": 256}

    def fingerprint(self, config: ScGPTConfig) -> dict[str, str]:
        out: dict[str, str] = {}
        if config.checkpoint is not None:
            weights = Path(config.checkpoint) / "best_model.pt"
            if weights.is_file():
                out["best_model.pt"] = sha256_file(weights)
        vocab = self._vocab_path(config)
        if vocab is not None and vocab.is_file():
            out["vocab.json"] = sha256_file(vocab)
        return out

    def check(self, config: ScGPTConfig) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if config.checkpoint is not None:
            folder = Path(config.checkpoint)
            if not folder.is_dir():
                return [("backbone.checkpoint", f"checkpoint folder '{folder}' not found")]
            missing = [
                f
                for f in ("args.json", "vocab.json", "best_model.pt")
                if not (folder / f).is_file()
            ]
            if missing:
                names = ", ".join(repr(m) for m in missing)
                message = (
                    f"checkpoint folder '{folder}' lacks {names}; "
                    "a scGPT folder holds args.json, vocab.json and best_model.pt"
                )
                problems.append(("backbone.checkpoint", message))
            elif config.explicit_arch():
                try:
                    self._arch(config)
                except CheckpointError as exc:
                    problems.append(("backbone.checkpoint", exc.message))
        elif config.vocab is not None and not Path(config.vocab).is_file():
            problems.append(("backbone.vocab", f"vocabulary file '{config.vocab}' not found"))
        return problems


@hookimpl
def sctune_register_backbones() -> list[type[Backbone]]:
    return [ScGPTBackbone]
