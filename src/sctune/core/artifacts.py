"""Run-directory file names, adapter-only weight files (safetensors + JSON manifest), hashing.

Imports no torch at module level, so plugins may use :func:`sha256_file` in cheap code paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from sctune.core.errors import CheckpointError

RECIPE = "recipe.resolved.yaml"
ENV = "env.json"
SPLIT = "split.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
HEAD_WEIGHTS = "head.safetensors"
REFERENCE = "reference.safetensors"
BACKBONE_WEIGHTS = "backbone.safetensors"  # only for a randomly initialised backbone
MANIFEST = "adapter.json"
GENES = "genes.txt"
LABELS = "labels.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.h5ad"
TRAIN_LOG = "train_log.jsonl"
AUDIT = "gradient_audit.json"
CONFUSION = "confusion_matrix.png"
UMAP = "umap.png"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write tensors as safetensors (contiguous CPU copies); return the file size in bytes."""
    from safetensors.torch import save_file

    # clone: tied or shared tensors (one storage, several names) must become separate tensors
    save_file(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path)
    )
    return path.stat().st_size


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"run directory is missing '{path.name}' ({path})")
    try:
        return load_file(str(path))
    except Exception as exc:  # truncated or overwritten file: safetensors raises its own types
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({type(exc).__name__}: {exc})",
            hint="the run directory is damaged; rerun the recipe, or restore the file from a copy",
        ) from exc


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"'{path.parent}' is not a complete sctune run directory: '{path.name}' is missing"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"'{path}' is not valid JSON ({exc})",
            hint="the run directory is damaged; rerun the recipe, or restore the file from a copy",
        ) from exc


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, what: str) -> None:
    """Copy saved tensors (parameters and buffers) into ``model`` by ``state_dict`` name; every
    saved name must exist with its shape."""
    state = model.state_dict(keep_vars=True)
    missing = [k for k in tensors if k not in state]
    shapes = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(state[k].shape)} in the model"
        for k, v in tensors.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or shapes:
        raise CheckpointError(
            f"{what} does not fit the rebuilt model\n  "
            + "\n  ".join([*(f"unknown tensor '{k}'" for k in missing[:8]), *shapes[:8]])
        )
    import torch

    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v.to(state[k].dtype))
