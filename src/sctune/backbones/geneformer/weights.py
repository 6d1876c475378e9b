"""Geneformer model folders: config, weight files, strict key accounting, parameter counts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sctune.core.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
V1_10M_SIZES = {
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
}
# Keys a Geneformer checkpoint may hold that the encoder does not use.
IGNORED_PREFIXES = ("cls.predictions.", "cls.seq_relationship.", "classifier.")
IGNORED_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def read_bert_config(path: str | Path) -> object:
    """``transformers.BertConfig`` from a ``config.json`` (file or the folder holding it)."""
    from transformers import BertConfig

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"geneformer model config '{path}' does not exist",
            hint="a Geneformer model folder holds config.json next to its weights",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"geneformer model config '{path}' is not valid JSON: {exc}"
        ) from exc
    if raw.get("model_type", "bert") != "bert":
        raise CheckpointError(
            f"geneformer model config '{path}' has model_type '{raw.get('model_type')}'; "
            "expected 'bert'"
        )
    return BertConfig(**raw)


def inline_bert_config(sizes: Mapping[str, int | None], vocab_size: int) -> object:
    """A Geneformer-style ``BertConfig`` (ReLU, absolute positions, pad 0) from inline sizes."""
    from transformers import BertConfig

    shape = {k: (sizes.get(k) or v) for k, v in V1_10M_SIZES.items()}
    return BertConfig(
        vocab_size=vocab_size,
        hidden_act="relu",
        pad_token_id=0,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02,
        initializer_range=0.02,
        **shape,
    )


def finish_config(
    config: object, *, attention_dropout: float, hidden_dropout: float | None
) -> dict:
    """Set dropout and sdpa attention; return the deviations from the file's values."""
    deviations = {}
    if config.attention_probs_dropout_prob != attention_dropout:
        deviations["attention_dropout"] = {
            "pretraining": config.attention_probs_dropout_prob,
            "used": attention_dropout,
        }
    config.attention_probs_dropout_prob = attention_dropout
    if hidden_dropout is not None:
        if config.hidden_dropout_prob != hidden_dropout:
            deviations["hidden_dropout"] = {
                "pretraining": config.hidden_dropout_prob,
                "used": hidden_dropout,
            }
        config.hidden_dropout_prob = hidden_dropout
    config.is_decoder = False
    config._attn_implementation = "sdpa"
    return deviations


def weight_file(checkpoint: str | Path) -> Path:
    """The weight file of a model folder (safetensors preferred)."""
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"geneformer checkpoint '{folder}' is not a folder",
            hint="point 'checkpoint' at the model folder holding config.json and the weights",
        )
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "(empty)"
    raise CheckpointError(
        f"geneformer checkpoint '{folder}' has no weight file; expected one of "
        f"{', '.join(WEIGHT_FILES)}\n  files present: {present}",
        hint="sharded checkpoints are not supported; training_args.bin is never loaded",
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``.bin`` read with ``torch.load(weights_only=True)``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the formats raise many unrelated types
        raise CheckpointError(
            f"geneformer weights '{path}' could not be read: {exc}",
            hint="only plain tensor state_dicts are accepted (torch.load with weights_only=True)",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"geneformer weights '{path}' are not a state_dict of tensors")
    if state and not any(k.startswith("bert.") for k in state):
        state = {f"bert.{k}": v for k, v in state.items()}  # saved from a bare BertModel
    return state


class LoadReport(dict):
    """What a build loaded (a dict, as before), with the one-line ``summary()`` a run logs."""

    def summary(self) -> str:
        if not self.get("loaded"):
            return str(self.get("source", "random init"))
        ignored = self.get("ignored") or ()
        extra = f"; ignored {len(ignored)} known-unused keys" if ignored else ""
        return f"loaded {self['loaded']} tensors from '{self['source']}'{extra}"


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """Load ``bert.*`` tensors into ``module.bert`` with strict accounting.

    Allowed differences: the ignored keys and prefixes above (MLM head, position ids, a
    fine-tuned classifier) and the pooler, which is fresh when the checkpoint lacks it and
    unused when the module has none. Everything else (missing, unexpected, shape mismatch)
    raises one :class:`CheckpointError` listing all problems.
    """
    own = {f"bert.{k}": v for k, v in module.bert.state_dict().items()}
    has_pooler = module.bert.pooler is not None
    ignored, missing, unexpected, shapes = [], [], [], []
    for key, tensor in state.items():
        unused_pooler = key.startswith("bert.pooler.") and not has_pooler
        if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or unused_pooler:
            ignored.append(key)
        elif key not in own:
            unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            shapes.append(
                f"{key} is {list(tensor.shape)} in the file, {list(own[key].shape)} in the model"
            )
    fresh = []
    for key in own:
        if key not in state:
            (fresh if key.startswith("bert.pooler.") else missing).append(key)
    problems = [f"missing: {k}" for k in missing[:10]]
    problems += [f"unexpected: {k}" for k in unexpected[:10]]
    problems += [f"shape mismatch: {s}" for s in shapes[:10]]
    if problems:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape"
        raise CheckpointError(
            f"checkpoint '{source}' does not fit backbone 'geneformer' ({counts})\n  "
            + "\n  ".join(problems),
            hint="check that config.json belongs to these weights and that the token "
            "dictionary matches the checkpoint's vocabulary",
        )
    bert_state = {k[len("bert.") :]: v for k, v in state.items() if k in own}
    module.bert.load_state_dict(bert_state, strict=False)
    return {"source": source, "loaded": len(bert_state), "ignored": ignored, "fresh": fresh}


def count_parameters(config: object, *, mlm_head: bool = True) -> int:
    """Parameter count of a Geneformer shape on the meta device (tied MLM decoder counted once).

    ``mlm_head=True`` gives the published numbers (e.g. 10,288,722 for V1-10M); ``False`` counts
    the encoder without pooler.
    """
    import torch
    from transformers import BertForMaskedLM, BertModel

    with torch.device("meta"):
        model = BertForMaskedLM(config) if mlm_head else BertModel(config, add_pooling_layer=False)
    return sum(p.numel() for p in model.parameters())
