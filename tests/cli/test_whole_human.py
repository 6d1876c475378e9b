"""``sctune inspect --json`` on a scGPT checkpoint folder in the real format at whole-human size.

512 dims, 12 layers, 8 heads, d_hid 512, a 60,697-token vocabulary (60,694 genes + <pad>, <cls>,
<eoc>). The trainable counts must equal methods.md's numbers plus the head, 527,360 + 513 n.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sctune import testing

ADAPTER_COUNTS = {
    "gene_token_prompt": 131_712,
    "gene_encoder_prompt": 1_580_544,
    "prefix_prompt": 393_216,
    "lora": 215_040,
}
N_GENES = 60_694


def head_size(n_classes: int) -> int:
    return 527_360 + 513 * n_classes


@pytest.fixture(scope="module")
def whole_human(tmp_path_factory: pytest.TempPathFactory, tiny_h5ad: Path) -> Path:
    from sctune.backbones.scgpt.model import ScGPTEncoder
    from sctune.backbones.scgpt.weights import SPECIALS, write_checkpoint

    genes = testing.adata_genes(tiny_h5ad)
    vocab = {g: i for i, g in enumerate(genes)}
    filler = (f"FILLER{i}" for i in range(N_GENES))
    while len(vocab) < N_GENES:
        vocab[next(filler)] = len(vocab)
    for tok in SPECIALS:
        vocab[tok] = len(vocab)
    assert len(vocab) == 60_697
    args = {
        "embsize": 512,
        "nheads": 8,
        "d_hid": 512,
        "nlayers": 12,
        "n_layers_cls": 3,
        "dropout": 0.2,
        "pad_token": "<pad>",
        "pad_value": -2,
        "n_bins": 51,
        "input_emb_style": "continuous",
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ScGPTEncoder(
            len(vocab),
            pad_id=vocab["<pad>"],
            embsize=512,
            nheads=8,
            d_hid=512,
            nlayers=12,
            dropout=0.2,
        )
    folder = tmp_path_factory.mktemp("whole_human") / "scGPT_human"
    write_checkpoint(folder, model.state_dict(), args, vocab, layout="flash")
    del model
    return folder


@pytest.fixture(scope="module")
def recipe(whole_human: Path, tiny_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whole_human_recipe") / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sctune": 1,
                "name": "whole-human",
                "seed": 0,
                "data": {"path": str(tiny_h5ad)},
                "backbone": {"name": "scgpt", "checkpoint": str(whole_human)},
                "adapter": {"name": "lora"},
                "task": {"name": "cell_type"},
            }
        )
    )
    return path


def _inspect(cli, recipe: Path, adapter: str) -> dict:
    result = cli("inspect", recipe, f"adapter={{name: {adapter}}}", "--json", "--no-audit")
    assert result.code == 0, result
    return json.loads(result.out)


@pytest.mark.parametrize("adapter", sorted(ADAPTER_COUNTS))
def test_adapter_counts(cli, recipe: Path, adapter: str) -> None:
    report = _inspect(cli, recipe, adapter)
    n = len(report["task_state"]["classes"])
    assert n == 10
    assert report["randomly_initialised"] is False
    assert report["head"] == head_size(n)
    assert report["adapters"][0]["trainable"] == ADAPTER_COUNTS[adapter]
    assert report["trainable"] == ADAPTER_COUNTS[adapter] + head_size(n)


def test_full_trains_everything(cli, recipe: Path) -> None:
    report = _inspect(cli, recipe, "full")
    assert report["trainable"] == report["total"]
    assert report["total"] == report["backbone_total"] + report["head"]
    assert report["backbone_total"] > 50_000_000


def test_inspect_reports_published_scgpt_count(cli, recipe: Path) -> None:
    """Encoder + ExprDecoder of the whole-human shape: 50,278,400 + 525,825."""
    report = _inspect(cli, recipe, "head")
    assert report["backbone_total"] == 50_278_400
    assert report["reference_model_parameters"] == 50_804_225


def test_inspect_reports_geneformer_v1_10m(
    cli, shared_data: Path, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """Real-size Geneformer V1-10M (config + real V1 dictionaries): 10,288,722 with its MLM head."""
    vocab = shared_data / "vocab"
    path = tmp_path / "gf.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sctune": 1,
                "name": "gf-v1-10m",
                "seed": 0,
                "data": {"path": str(tiny_h5ad)},
                "backbone": {
                    "name": "geneformer",
                    "model_config": str(
                        shared_data / "geneformer_configs" / "v1_6L_10M_config.json"
                    ),
                    "token_dictionary": str(vocab / "geneformer_v1_token_dictionary.json"),
                    "gene_median_dictionary": str(
                        vocab / "geneformer_v1_gene_median_dictionary.json"
                    ),
                    "gene_name_id_dict": str(vocab / "geneformer_v1_gene_name_id_dict.json"),
                },
                "adapter": {"name": "lora"},
                "task": {"name": "cell_type"},
            }
        )
    )
    result = cli("inspect", path, "--json", "--no-audit")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["reference_model_parameters"] == 10_288_722
    # LoRA r=8 on query and value of 6 layers at hidden 256: 6 * 2 * (8*256 + 256*8) + biases
    assert report["adapters"][0]["trainable"] == 6 * 2 * (2 * 8 * 256) + 6 * 2 * 256
