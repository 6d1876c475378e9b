"""Tiny grids for the bench tests: a tiny random scGPT (``example_config``) on the tiny data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sctune import testing


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tiny_h5ad: Path, registry: Any) -> Path:
    """A base recipe file (tiny scGPT, 2 epochs, CPU) written next to where grids go."""
    folder = tmp_path_factory.mktemp("bench_base")
    recipe = testing.example_recipe(registry, "scgpt", "lora", folder, tiny_h5ad, epochs=2)
    recipe.pop("output")
    path = folder / "scgpt_tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def make_grid(tiny_base: Path, tiny_h5ad: Path) -> Any:
    """``make_grid(folder, **top_level_keys)``: write a tiny grid file; returns its path."""

    def make(folder: Path, name: str = "grid.yaml", **extra: Any) -> Path:
        return write_grid(folder, tiny_grid(tiny_base, tiny_h5ad, **extra), name)

    return make


def tiny_grid(base: Path, data: Path, **extra: Any) -> dict[str, Any]:
    """A grid mapping: the tiny scGPT, LoRA (+ full and zero_shot per backbone), 3 seeds."""
    grid: dict[str, Any] = {
        "bench": 1,
        "name": "tiny",
        "seeds": 3,
        "set": {"backbone.max_seq_len": 64},  # 63 genes per cell: fast
        "backbones": {"scgpt": {"recipe": str(base)}},
        "methods": {"lora": {"adapter": {"name": "lora", "rank": 2}}},
        "datasets": {
            "tiny": {
                "data": {
                    "path": str(data),
                    "label_column": "cell_type",
                    "split": {"method": "stratified", "valid": 0.15, "test": 0.25},
                }
            },
            "elsewhere": {"data": {"path": str(data.parent / "absent.h5ad")}, "optional": True},
        },
        "tasks": {"cell_type": {"datasets": ["tiny", "elsewhere"]}},
        "baselines": {"per_backbone": ["full", "zero_shot"], "n_hvg": 100, "n_pcs": 10},
        "stats": {"bootstrap": 300},
        "report": {"umap": True},
    }
    grid.update(extra)
    return grid


def write_grid(folder: Path, grid: dict[str, Any], name: str = "grid.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path
