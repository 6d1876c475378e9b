"""Recipe files for the CLI tests: a tiny random scGPT on the tiny counts data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def tiny_recipe(data_path: Path, out: Path, **sections: dict) -> dict:
    recipe = {
        "sctune": 1,
        "name": "cli-test",
        "seed": 0,
        "data": {"path": str(data_path), "label_column": "cell_type"},
        "backbone": {
            "name": "scgpt",
            "embsize": 32,
            "nheads": 4,
            "d_hid": 64,
            "nlayers": 2,
            "dropout": 0.0,
            "max_seq_len": 128,
        },
        "adapter": {"name": "lora"},
        "task": {"name": "cell_type", "umap": False},
        "trainer": {"epochs": 1, "batch_size": 16, "device": "cpu", "early_stopping": None},
        "output": {"dir": str(out), "plots": False},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


@pytest.fixture
def write_recipe(tmp_path: Path, tiny_h5ad: Path):
    """``write_recipe(**sections)`` writes a valid tiny recipe (sections merged in) and returns its path."""

    def write(name: str = "recipe.yaml", **sections: dict) -> Path:
        path = tmp_path / name
        path.write_text(
            yaml.safe_dump(tiny_recipe(tiny_h5ad, tmp_path / "run", **sections), sort_keys=False)
        )
        return path

    return write
