"""Reading and writing scBERT's files: ``.pth`` checkpoints, gene2vec ``.npy``, gene order.

A checkpoint is a dict whose weights sit under ``model_state_dict`` (other entries such as
``epoch`` or ``optimizer_state_dict`` are ignored). Keys may carry a DDP ``module.`` prefix.
Loading is strict: any missing, unexpected or shape-mismatched key is a
:class:`~sctune.core.errors.CheckpointError`, with one documented exception: a fine-tuned file
replaces the LM head ``to_out.{weight,bias}`` with scBERT's classifier ``to_out.{conv1,fc1,fc2,
fc3}.*``, which is accepted, reported and not used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sctune.core.errors import CheckpointError

LM_HEAD_KEYS = ("to_out.weight", "to_out.bias")
_CLASSIFIER = re.compile(r"^to_out\.(conv1|fc1|fc2|fc3)\.")
_MAX_LISTED = 8
_SLOT_KEY = re.compile(r"(^|\.)(input_slot|stream_slot|output_slot|parallel|prompt)\.")


@dataclass
class LoadReport:
    """What loading a checkpoint did, for run reports."""

    loaded: int = 0
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        """One line for the run log: how many tensors came from which file, and the notes."""
        text = f"loaded {self.loaded} tensors from '{self.source}'"
        return "; ".join([text, *self.notes])


def read_gene_order(path: str | Path) -> list[str]:
    """Gene symbols, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"backbone.gene_order: file '{path}' not found",
            hint="give the 16,906-gene order of scBERT's pretraining (one symbol per line, the "
            "var_names of 'panglao_10000.h5ad')",
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"backbone.gene_order: '{path}' is not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x}"
            f" at offset {exc.start})",
            hint="give a text file with one gene symbol per line",
        ) from None
    genes = [line.strip() for line in text.splitlines() if line.strip()]
    if not genes:
        raise CheckpointError(f"backbone.gene_order: file '{path}' holds no gene symbols")
    return genes


def read_gene2vec(path: str | Path, *, n_genes: int | None, dim: int) -> np.ndarray:
    """The gene2vec matrix ``(n_genes, dim)`` as float32."""
    path = Path(path)
    expected = f"[{n_genes if n_genes is not None else 'n_genes'}, {dim}]"
    if not path.is_file():
        raise CheckpointError(
            f"backbone.gene2vec: file '{path}' not found",
            hint=f"give a .npy array of shape {expected} (scBERT: 'gene2vec_16906.npy')",
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # not .npy, truncated, or a pickle
        raise CheckpointError(
            f"backbone.gene2vec: '{path}' is not a readable .npy array ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})",
            hint=f"give a .npy array of shape {expected} saved with numpy.save",
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise CheckpointError(
            f"backbone.gene2vec: '{path}' does not hold a numeric array",
            hint=f"give a .npy array of shape {expected} saved with numpy.save",
        )
    if arr.ndim != 2 or arr.shape[1] != dim or (n_genes is not None and arr.shape[0] != n_genes):
        raise CheckpointError(
            f"backbone.gene2vec: '{path}' has shape {list(arr.shape)}, expected {expected}\n"
            "  rows must equal the lines of 'gene_order' and columns must equal 'dim'"
        )
    return np.asarray(arr, dtype=np.float32)


def gene2vec_problem(path: str | Path, *, n_genes: int | None, dim: int) -> str | None:
    """Why the gene2vec file cannot be used (read from its header only), or ``None``."""
    try:
        arr = np.load(Path(path), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return (
            f"'{path}' is not a readable .npy array ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        )
    expected = f"[{n_genes if n_genes is not None else 'n_genes'}, {dim}]"
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        return f"'{path}' does not hold a numeric array"
    if arr.ndim != 2 or arr.shape[1] != dim or (n_genes is not None and arr.shape[0] != n_genes):
        return (
            f"'{path}' has shape {list(arr.shape)}, expected {expected} (rows: the lines of "
            "'gene_order', columns: 'dim')"
        )
    return None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """State dict of a scBERT ``.pth`` (``module.`` stripped) and its ignored top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"backbone.checkpoint: file '{path}' not found",
            hint="give scBERT's 'panglao_pretrained.pth' or a file saved in the same layout",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary pickles: report, never fall back
        raise CheckpointError(
            f"backbone.checkpoint: '{path}' could not be read with torch.load(weights_only=True)\n"
            f"  {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="sctune does not unpickle arbitrary objects; re-save the weights as a plain dict",
        ) from exc
    ignored: list[str] = []
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        ignored = sorted(str(k) for k in obj if k != "model_state_dict")
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"backbone.checkpoint: '{path}' is not a scBERT checkpoint\n"
            "  expected a dict with 'model_state_dict' (or a plain state dict) of tensors"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, ignored


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f" (+{len(items) - len(shown)} more)" if len(items) > len(shown) else ""
    return f"\n  {title}: " + ", ".join(f"'{k}'" for k in shown) + more


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> LoadReport:
    """Copy ``state`` into ``model`` (all keys except ``stem.*``); fail on any surprise."""
    expected = {k: v for k, v in model.state_dict().items() if is_scbert_key(k)}
    report = LoadReport(source=source)
    classifier = sorted(k for k in state if _CLASSIFIER.match(k))
    if classifier:
        report.notes.append(
            f"'{source}' is a fine-tuned scBERT file: its classifier ({len(classifier)} tensors "
            "under 'to_out.conv1/fc1/fc2/fc3') is ignored; the LM head stays randomly initialised "
            "(it is not used)"
        )
    missing = sorted(k for k in expected if k not in state)
    if classifier:
        missing = [k for k in missing if k not in LM_HEAD_KEYS]
    unexpected = sorted(k for k in state if k not in expected and k not in classifier)
    mismatched = [
        f"{k} is {list(state[k].shape)} in the file, {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        text = f"checkpoint '{source}' does not fit backbone 'scbert'"
        if missing:
            text += _listing("missing keys", missing)
        if unexpected:
            text += _listing("unexpected keys", unexpected)
        for line in mismatched[:_MAX_LISTED]:
            text += f"\n  shape mismatch: {line}"
        raise CheckpointError(
            text,
            hint="check 'dim', 'depth', 'heads', 'dim_head', 'nb_features' and the gene order "
            "against the checkpoint (scBERT: 200, 6, 10, 64, 266 features, 16,906 genes)",
        )
    with torch.no_grad():
        for k, target in expected.items():
            if k in state:
                target.copy_(state[k].to(target.dtype))
                report.loaded += 1
    return report


def set_gene2vec(model: nn.Module, gene2vec: np.ndarray) -> None:
    """Fill the frozen position table with gene2vec rows plus a zero row for the last slot."""
    table = model.pos_emb.emb.weight
    with torch.no_grad():
        table[:-1].copy_(torch.from_numpy(gene2vec).to(table.dtype))
        table[-1].zero_()


def is_scbert_key(key: str) -> bool:
    """Whether a state-dict key belongs in scBERT's checkpoint layout: not sctune's ``stem.*``
    and nothing attached to an insertion-point slot."""
    return not key.startswith("stem.") and not _SLOT_KEY.search(key)


def scbert_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors in scBERT's layout (:func:`is_scbert_key`)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_scbert_key(k)}


def save_checkpoint(model: nn.Module, path: str | Path, **extra: object) -> Path:
    """Write ``{"model_state_dict": ...}`` in scBERT's layout (plus ``extra`` entries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": scbert_state_dict(model), **extra}, path)
    return path


def from_performer_pytorch(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``performer_pytorch.PerformerLM`` state dict (built with
    ``rotary_position_emb=False, attn_out_bias=True``) to scBERT's layout: drop the
    ``performer.proj_updater.instance.*`` duplicates and move the redraw counter."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("performer.proj_updater.instance."):
            continue
        out[key.replace("performer.proj_updater.", "performer.")] = value
    return out


def write_random_files(
    workdir: str | Path,
    genes: list[str],
    *,
    dim: int,
    depth: int,
    heads: int,
    dim_head: int,
    nb_features: int | None,
    seed: int,
    prefix: str = "scbert",
) -> dict[str, Path]:
    """Write a seeded random model in scBERT's formats: gene order, gene2vec ``.npy``, ``.pth``.

    Used when no checkpoint is given, so that a later rebuild (``sctune predict``) gets exactly
    the same frozen weights and random-feature projections.
    """
    from sctune.backbones.scbert.model import ScBERTModel

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    order = workdir / f"{prefix}_gene_order.txt"
    order.write_text("".join(f"{g}\n" for g in genes))
    gene2vec = workdir / f"{prefix}_gene2vec.npy"
    rng = np.random.default_rng(seed)
    np.save(gene2vec, rng.standard_normal((len(genes), dim)).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ScBERTModel(
            len(genes),
            dim=dim,
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            nb_features=nb_features,
            pooling="mean",
        )
    set_gene2vec(model, read_gene2vec(gene2vec, n_genes=len(genes), dim=dim))
    checkpoint = save_checkpoint(model, workdir / f"{prefix}_random_init.pth", seed=seed)
    return {"checkpoint": checkpoint, "gene2vec": gene2vec, "gene_order": order}
