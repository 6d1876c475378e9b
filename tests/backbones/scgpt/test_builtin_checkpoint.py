"""The checkpoint shipped inside the package (``builtin:pbmc_small``, the quickstart's backbone):
it resolves from any folder, loads strictly, is written back by name, carries its cell record,
and a wrong name is a located exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from sctune import api
from sctune.backbones.scgpt.checkpoints import BUILTIN, HERE, name_of, resolve
from sctune.backbones.scgpt.config import ScGPTConfig
from sctune.backbones.scgpt.plugin import ScGPTBackbone
from sctune.core import provenance

FOLDER = HERE / "pbmc_small"


def test_the_name_resolves_to_a_real_format_folder_that_loads_strictly() -> None:
    assert set(BUILTIN) == {"pbmc_small"}
    assert resolve("builtin:pbmc_small") == FOLDER
    assert resolve("some/path") == "some/path" and resolve(None) is None
    for f in ("args.json", "vocab.json", "best_model.pt", "pretraining_cells.json", "NOTICE"):
        assert (FOLDER / f).is_file(), f
    args = json.loads((FOLDER / "args.json").read_text())
    assert (args["embsize"], args["nlayers"], args["input_style"]) == (128, 4, "log1p")
    cfg = ScGPTConfig(checkpoint="builtin:pbmc_small", value_style="log1p", pooling="mean")
    assert cfg.checkpoint == FOLDER
    assert cfg.model_dump()["checkpoint"] == "builtin:pbmc_small"  # written back by name
    assert name_of(FOLDER) == "builtin:pbmc_small" and name_of(FOLDER.parent) is None
    module = ScGPTBackbone().build(cfg)
    summary = module.load_report.summary()
    assert "loaded 57 tensors" in summary and "ignored 6 known-unused keys (decoder)" in summary
    state = torch.load(FOLDER / "best_model.pt", map_location="cpu", weights_only=True)
    for key, value in module.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key]), key


def test_its_cell_record_is_found_and_names_the_source_files() -> None:
    record = json.loads((FOLDER / "pretraining_cells.json").read_text())
    assert record["dataset"] == ["pbmc3k_seurat_labeled.h5ad", "zheng_sorted_pbmc_facs.h5ad"]
    sizes = {k: len(record[k]) for k in ("train", "valid", "test")}
    assert sizes == {"train": 4557, "valid": 652, "test": 1303}
    assert provenance.find({"checkpoint": FOLDER}) == FOLDER / "pretraining_cells.json"
    # a run on the pbmc3k file (its cell ids are 10x barcodes; Zheng's end in _<i>) that tests on
    # every cell is told how many pretrained the checkpoint
    pbmc3k = {k: [c for c in record[k] if "_" not in c] for k in ("train", "valid", "test")}
    ids = pbmc3k["train"] + pbmc3k["valid"] + pbmc3k["test"]
    assert len(ids) == 2638
    seen = provenance.overlap(
        {"checkpoint": FOLDER}, "/elsewhere/pbmc3k_seurat_labeled.h5ad", ids, np.arange(len(ids))
    )
    pretrained_on = len(pbmc3k["train"]) + len(pbmc3k["valid"])
    assert seen is not None and seen["test_cells_pretrained_on"] == pretrained_on


def test_the_quickstart_uses_it_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    res = api.run(
        "quickstart",
        [
            "trainer.epochs=1",
            "trainer.num_threads=1",
            "data.max_cells=150",
            "output.plots=false",
            f"output.dir={tmp_path / 'run'}",
        ],
        progress=False,
        log=said.append,
    )
    assert any("pretrained weights: loaded 57 tensors" in m for m in said), said
    assert not any("RANDOMLY INITIALISED" in m for m in said)
    assert res.metrics["backbone_randomly_initialised"] is False
    assert res.metrics["test"]["pretraining_cells"]["test_cells_pretrained_on"] is None
    resolved = yaml.safe_load((res.run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["backbone"]["checkpoint"] == "builtin:pbmc_small"
    assert not (res.run_dir / "backbone.safetensors").exists()  # the weights are the package's


def test_an_unknown_name_is_a_located_exit_2(cli) -> None:
    res = cli("validate", "quickstart", "backbone.checkpoint=builtin:pbmc_big")
    assert res.code == 2 and "Traceback" not in res.text
    assert "backbone.checkpoint" in res.text and "'builtin:pbmc_small'" in res.text
