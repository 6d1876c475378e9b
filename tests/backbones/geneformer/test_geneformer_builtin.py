"""The Geneformer V1 dictionaries shipped inside the package ('builtin:v1') and gzip input."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from sctune.backbones.geneformer.config import GeneformerConfig
from sctune.backbones.geneformer.dictionaries import (
    DATA_DIR,
    dictionary_file,
    load_median_dictionary,
    load_string_map,
    load_token_dictionary,
)
from sctune.backbones.geneformer.plugin import GeneformerBackbone
from sctune.core.errors import CheckpointError

V1 = {
    "token_dictionary": "builtin:v1",
    "gene_median_dictionary": "builtin:v1",
    "gene_name_id_dict": "builtin:v1",
}


def test_builtin_v1_dictionaries_load() -> None:
    tokens = load_token_dictionary("builtin:v1")
    medians = load_median_dictionary("builtin:v1")
    names = load_string_map("builtin:v1", what="gene name id dict")
    assert len(tokens) == 25_426 and tokens["<pad>"] == 0 and tokens["<mask>"] == 1
    assert sorted(tokens.values()) == list(range(25_426))
    assert set(medians) == set(tokens) - {"<pad>", "<mask>"}
    assert len(names) == 40_248 and names["CD3E"].startswith("ENSG")
    assert (DATA_DIR / "NOTICE").is_file() and "Apache" in (DATA_DIR / "LICENSE").read_text()


def test_builtin_v1_equals_the_shared_json(shared_data: Path) -> None:
    vocab = shared_data / "vocab"
    for key in V1:
        shipped = json.loads(gzip.decompress(dictionary_file("builtin:v1", key).read_bytes()))
        original = json.loads((vocab / f"geneformer_v1_{key}.json").read_text())
        assert shipped == original and list(shipped) == list(original), key


def test_unknown_builtin_is_a_recipe_error() -> None:
    with pytest.raises(ValidationError, match=r"no built-in token dictionary 'builtin:v2'"):
        GeneformerConfig(token_dictionary="builtin:v2")
    with pytest.raises(ValidationError, match=r"built-in: none"):
        GeneformerConfig(ensembl_mapping_dict="builtin:v1")
    with pytest.raises(CheckpointError, match="no built-in"):
        load_token_dictionary("builtin:v9")


def test_builtin_config_checks_and_fingerprints() -> None:
    backbone = GeneformerBackbone()
    config = GeneformerConfig(hidden_size=16, **V1)
    assert backbone.check(config) == []
    prints = backbone.fingerprint(config)
    assert set(prints) == set(V1) and all(len(v) == 64 for v in prints.values())
    assert backbone.fingerprint(GeneformerConfig(hidden_size=16, **V1)) == prints


def test_gzipped_json_and_pickle_files_load(tmp_path: Path) -> None:
    tokens = {"<pad>": 0, "<mask>": 1, "ENSG1": 2}
    (tmp_path / "t.json.gz").write_bytes(gzip.compress(json.dumps(tokens).encode()))
    (tmp_path / "t.pkl.gz").write_bytes(gzip.compress(pickle.dumps(tokens, protocol=2)))
    assert load_token_dictionary(tmp_path / "t.json.gz") == tokens
    assert load_token_dictionary(tmp_path / "t.pkl.gz") == tokens
    (tmp_path / "bad.json.gz").write_bytes(b"\x1f\x8b" + b"not gzip")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_token_dictionary(tmp_path / "bad.json.gz")
