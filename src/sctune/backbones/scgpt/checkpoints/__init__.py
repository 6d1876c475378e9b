"""Checkpoints shipped inside sctune, named ``builtin:<name>`` in ``backbone.checkpoint``.

Each is a folder in scGPT's real format (args.json, vocab.json, best_model.pt) plus
``pretraining_cells.json`` (which cells trained it) and a NOTICE (how it was made, from which
data, under which licence). They are sctune's own small self-pretrained models, not scGPT's
published weights.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "builtin:"
HERE = Path(__file__).resolve().parent
BUILTIN: dict[str, str] = {
    # 0.65 M encoder parameters (128 dims x 4 layers), log1p values, mean pooling; 6,512 PBMCs
    # (pbmc3k + Zheng sorted) over the 765 genes of scanpy's pbmc68k_reduced (the quickstart's).
    "pbmc_small": "pbmc_small",
}


def resolve(value: object) -> object:
    """``builtin:<name>`` -> the packaged folder; anything else unchanged. An unknown name
    raises ``ValueError`` naming the known ones."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    name = value[len(PREFIX) :]
    if name not in BUILTIN:
        known = ", ".join(f"'{PREFIX}{n}'" for n in BUILTIN)
        raise ValueError(
            f"'{value}' is not a checkpoint shipped with sctune (shipped: {known}); "
            "otherwise give the path of a scGPT folder with args.json, vocab.json, best_model.pt"
        )
    return HERE / BUILTIN[name]


def name_of(path: object) -> str | None:
    """``builtin:<name>`` when ``path`` is a shipped checkpoint's folder, else ``None``."""
    try:
        folder = Path(str(path)).resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop
        return None
    for name, sub in BUILTIN.items():
        if folder == HERE / sub:
            return f"{PREFIX}{name}"
    return None
