"""Reading and writing scGPT checkpoint folders (``args.json``, ``vocab.json``, ``best_model.pt``).

Three attention key layouts are accepted (backbones.md section 1.3) and normalised to sctune's
names (``self_attn.Wqkv.*``, ``self_attn.out_proj.*``):

- flash v1: ``self_attn.Wqkv.{weight,bias}`` (distributed checkpoints such as scGPT_human);
- torch native: ``self_attn.in_proj_weight``, ``self_attn.in_proj_bias``;
- wrapped: ``self_attn._impl.Wqkv.*``, ``self_attn._impl.out_proj.*``.

A leading ``module.`` (DataParallel) is dropped. Keys of parts outside the encoder path are
known-unused and only reported; anything else that does not fit raises ``CheckpointError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sctune.core.errors import CheckpointError

SPECIALS = ("<pad>", "<cls>", "<eoc>")
ARGS, VOCAB, WEIGHTS = "args.json", "vocab.json", "best_model.pt"
REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers")

# Parts of scGPT's TransformerModel that are not on the encoder path (`_encode`): output heads and
# the batch-label embedding, which only feeds the decoders. `bn.*`/`dsbn.*` are NOT here: they
# normalise the input embeddings, so ignoring them would silently change the encoder.
KNOWN_UNUSED = (
    "decoder.",
    "mvc_decoder.",
    "cls_decoder.",
    "grad_reverse_discriminator.",
    "batch_encoder.",
)
UNSUPPORTED = {
    "bn.": "batch norm on the input embeddings (domain_spec_batchnorm='batchnorm')",
    "dsbn.": "domain-specific batch norm on the input embeddings (needs batch labels)",
}

Layout = Literal["flash", "native", "wrapped"]


@dataclass
class LoadReport:
    """What happened to each checkpoint key."""

    path: str
    layouts: set[str] = field(default_factory=set)
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        layouts = ", ".join(sorted(self.layouts)) or "none"
        text = (
            f"loaded {len(self.loaded)} tensors from '{self.path}' (attention layout: {layouts})"
        )
        if self.ignored:
            heads = sorted({k.split(".")[0] for k in self.ignored})
            text += f"; ignored {len(self.ignored)} known-unused keys ({', '.join(heads)})"
        return text


def read_args(folder: Path) -> dict[str, Any]:
    """Read ``args.json`` and check the architecture fields."""
    path = Path(folder) / ARGS
    try:
        args = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"checkpoint folder '{folder}' has no '{ARGS}'") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise CheckpointError(f"'{path}' must be a JSON object of architecture fields")
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise CheckpointError(
            f"'{path}' lacks the architecture fields {', '.join(repr(k) for k in missing)}\n"
            f"  scGPT checkpoints record {', '.join(REQUIRED_ARGS)} in args.json"
        )
    return args


def read_vocab(path: Path) -> dict[str, int]:
    """Read a ``vocab.json`` and append any missing ``<pad>``, ``<cls>``, ``<eoc>``."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"vocabulary file '{path}' not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"vocabulary '{path}' is a directory, not a vocab.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON: {exc}") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise CheckpointError(f"'{path}' must be a JSON object mapping gene symbol to integer id")
    vocab = {str(k): int(v) for k, v in vocab.items()}
    next_id = max(vocab.values(), default=-1) + 1
    for tok in SPECIALS:
        if tok not in vocab:
            vocab[tok] = next_id
            next_id += 1
    return vocab


def vocab_size(vocab: Mapping[str, int]) -> int:
    """Embedding rows needed: one past the largest id."""
    return max(vocab.values()) + 1


def _normalise_key(key: str) -> tuple[str, str | None]:
    """Map a checkpoint key to sctune's name; also return the attention layout it shows."""
    key = key.removeprefix("module.")
    if ".self_attn._impl." in key:
        return key.replace(".self_attn._impl.", ".self_attn."), "wrapped"
    if key.endswith(".self_attn.in_proj_weight"):
        return key[: -len("in_proj_weight")] + "Wqkv.weight", "native"
    if key.endswith(".self_attn.in_proj_bias"):
        return key[: -len("in_proj_bias")] + "Wqkv.bias", "native"
    if ".self_attn.Wqkv." in key:
        return key, "flash"
    return key, None


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    path: str,
    n_vocab_entries: int | None = None,
) -> LoadReport:
    """Load ``state`` into ``model``; raise ``CheckpointError`` listing every surprise."""
    report = LoadReport(path=path)
    own = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state.items():
        name, layout = _normalise_key(key)
        if layout:
            report.layouts.add(layout)
        if name in own:
            if name in renamed:
                problems.append(f"duplicate key: '{key}' maps onto '{name}' twice")
            renamed[name] = tensor
        elif name.startswith(KNOWN_UNUSED):
            report.ignored.append(name)
        elif name.startswith(tuple(UNSUPPORTED)):
            what = next(v for k, v in UNSUPPORTED.items() if name.startswith(k))
            problems.append(f"unsupported key: '{key}' belongs to {what}, which sctune lacks")
        else:
            problems.append(f"unexpected key: '{key}'")
    for name in own:
        if name not in renamed:
            problems.append(f"missing key: '{name}'")
    for name, tensor in renamed.items():
        want = own[name]
        if tuple(tensor.shape) != tuple(want.shape):
            problems.append(
                f"shape mismatch: {name} is {list(tensor.shape)} in the file, "
                f"{list(want.shape)} in the model"
            )
            if name == "encoder.embedding.weight" and n_vocab_entries is not None:
                problems.append(
                    f"vocab.json has {n_vocab_entries} entries (after adding missing special "
                    f"tokens); the checkpoint was trained with {tensor.shape[0]}"
                )
    if len(report.layouts) > 1:
        problems.append(f"mixed attention key layouts: {', '.join(sorted(report.layouts))}")
    if problems:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit backbone 'scgpt'\n  " + "\n  ".join(problems),
            hint="use the args.json and vocab.json that came with the weights; accepted attention "
            "layouts: self_attn.Wqkv.*, self_attn.in_proj_*, self_attn._impl.*",
        )
    model.load_state_dict(renamed, strict=True)
    report.loaded = sorted(renamed)
    return report


def load_checkpoint(
    model: nn.Module, folder: Path, n_vocab_entries: int | None = None
) -> LoadReport:
    """Load ``folder/best_model.pt`` (``weights_only=True``) into ``model``."""
    path = Path(folder) / WEIGHTS
    return load_state(model, read_state(folder), path=str(path), n_vocab_entries=n_vocab_entries)


def read_state(folder: Path) -> Mapping[str, torch.Tensor]:
    """The raw state_dict of ``folder/best_model.pt`` (``weights_only=True``)."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint folder '{folder}' has no '{WEIGHTS}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read '{path}' with torch.load(weights_only=True): {exc}"
        ) from None
    if isinstance(state, dict) and "model_state_dict" in state and len(state) < 10:
        state = state["model_state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not a state_dict")
    return state


_LAYOUT_RENAMES: dict[str, list[tuple[str, str]]] = {
    "flash": [],
    "native": [
        (r"\.self_attn\.Wqkv\.weight$", ".self_attn.in_proj_weight"),
        (r"\.self_attn\.Wqkv\.bias$", ".self_attn.in_proj_bias"),
    ],
    "wrapped": [(r"\.self_attn\.(Wqkv|out_proj)\.", r".self_attn._impl.\1.")],
}


def to_layout(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Rename sctune/flash-style keys (or native ones) into ``layout``."""
    out = {}
    for key, tensor in state.items():
        name, _ = _normalise_key(key)
        for pattern, repl in _LAYOUT_RENAMES[layout]:
            name = re.sub(pattern, repl, name)
        out[name] = tensor
    return out


def write_checkpoint(
    folder: Path,
    state_dict: Mapping[str, torch.Tensor],
    args: Mapping[str, Any],
    vocab: Mapping[str, int],
    layout: Layout = "flash",
    *,
    prefix: str = "",
) -> Path:
    """Write a checkpoint folder in scGPT's real format (for tests and ``example_config``).

    ``state_dict`` may use sctune's (flash) or the native key names; ``prefix`` (e.g.
    ``"module."``) is prepended to every key.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARGS).write_text(json.dumps(dict(args), indent=2))
    (folder / VOCAB).write_text(json.dumps(dict(vocab)))
    state = {
        prefix + k: v.detach().clone().contiguous()
        for k, v in to_layout(state_dict, layout).items()
    }
    torch.save(state, folder / WEIGHTS)
    return folder
