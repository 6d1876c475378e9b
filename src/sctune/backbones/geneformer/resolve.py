"""Data-derived dictionaries for randomly initialised models, and the tiny example instance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sctune.backbones.geneformer.dictionaries import (
    load_string_map,
    load_token_dictionary,
    write_json,
)
from sctune.backbones.geneformer.tokenizer import TARGET_SUM, _strip_version
from sctune.core.cells import Expression, looks_like_ensembl, looks_like_mouse_symbols


def _data_ids(genes: Sequence[str], name_map_path: str | None) -> list[str]:
    """The identifiers the tokenizer will look up for ``genes``, deduplicated."""
    return list(dict.fromkeys(_column_ids(genes, name_map_path)))


def _column_ids(genes: Sequence[str], name_map_path: str | None) -> list[str]:
    """The identifier looked up for each column of ``genes`` (see ``map_columns``)."""
    genes = [str(g) for g in genes]
    if looks_like_ensembl(genes):
        ids = [_strip_version(g) for g in genes]
    elif name_map_path:
        name_map = load_string_map(name_map_path, what="gene name id dict")
        if looks_like_mouse_symbols(genes):  # exact only, as the tokenizer does
            ids = [name_map.get(g) or g for g in genes]
        else:
            upper = {k.upper(): v for k, v in name_map.items()}
            ids = [name_map.get(g) or upper.get(g.upper()) or g for g in genes]
    else:
        ids = genes
    return ids


def training_medians(expression: Expression, ids: Sequence[str]) -> dict[str, float]:
    """Per gene: the non-zero median of ``count / n_counts * 1e4`` over the TRAINING cells.

    This is how Geneformer built its gene median dictionary over its pretraining corpus; here the
    corpus is the run's training split (the engine never passes test cells). Genes never detected
    get 1.0. Duplicate identifiers keep their first column, as the tokenizer's lookup does.
    """
    from scipy import sparse

    X = sparse.csc_matrix(expression.X, dtype=np.float64)
    lib = expression.library_size
    if lib is None:
        lib = np.asarray(X.sum(axis=1)).ravel()
    scale = TARGET_SUM / np.maximum(np.asarray(lib, dtype=np.float64), 1.0)
    out: dict[str, float] = {}
    for j, gid in enumerate(ids):
        if gid in out:
            continue
        col = X[:, j]
        values = col.data * scale[col.indices]
        values = values[values > 0]
        out[gid] = float(np.median(values)) if values.size else 1.0
    return out


def derive_dictionaries(
    config: object, genes: Sequence[str], run_dir: Path, *, expression: Expression | None = None
) -> dict[str, str]:
    """Write the missing token/median dictionaries for a random-init model into ``run_dir``.

    Token dictionary: ``<pad>`` 0, ``<mask>`` 1 (then ``<cls>``, ``<eos>`` for ``version: v2``)
    and the data's genes in column order. Medians: the training cells' non-zero medians of
    normalised counts (:func:`training_medians`); 1.0 for every gene when no counts are given.
    """
    update: dict[str, str] = {}
    ids = _data_ids(genes, config.gene_name_id_dict)
    if config.token_dictionary:
        tokens = load_token_dictionary(config.token_dictionary)
    else:
        specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if config.version == "v2" else [])
        tokens = {s: i for i, s in enumerate(specials)}
        for gid in ids:
            tokens.setdefault(gid, len(tokens))
        path = write_json(tokens, Path(run_dir) / "geneformer_token_dictionary.json")
        update["token_dictionary"] = str(path)
    if not config.gene_median_dictionary:
        medians = {k: 1.0 for k in tokens if not (k.startswith("<") and k.endswith(">"))}
        if expression is not None and expression.kind == "counts":
            per_column = _column_ids(list(expression.genes), config.gene_name_id_dict)
            found = training_medians(expression, per_column)
            medians.update({k: v for k, v in found.items() if k in medians})
        path = write_json(medians, Path(run_dir) / "geneformer_gene_median_dictionary.json")
        update["gene_median_dictionary"] = str(path)
    return update


def write_example(
    workdir: Path, genes: Sequence[str], *, version: str = "v1"
) -> dict[str, object]:
    """A tiny Geneformer in the real formats: ``save_pretrained`` folder plus JSON dictionaries.

    BertForMaskedLM with hidden 32, 2 layers, 2 heads, FFN 64, 64 positions; the dictionaries
    cover ``genes`` (symbols) through a fake symbol -> Ensembl map.
    """
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM

    workdir = Path(workdir)
    symbols = list(dict.fromkeys(str(g) for g in genes))
    name_map = {s: f"ENSG{90000000000 + i:011d}" for i, s in enumerate(symbols)}
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == "v2" else [])
    tokens = {s: i for i, s in enumerate(specials)}
    tokens.update({e: len(specials) + i for i, e in enumerate(name_map.values())})
    rng = np.random.default_rng(0)
    medians = {e: float(m) for e, m in zip(name_map.values(), rng.uniform(0.5, 5.0, len(symbols)))}
    cfg = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="relu",
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(cfg)
    folder = workdir / f"geneformer_tiny_{version}"
    model.save_pretrained(folder)
    return {
        "checkpoint": str(folder),
        "token_dictionary": str(
            write_json(tokens, workdir / f"gf_{version}_token_dictionary.json")
        ),
        "gene_median_dictionary": str(write_json(medians, workdir / f"gf_{version}_medians.json")),
        "gene_name_id_dict": str(write_json(name_map, workdir / f"gf_{version}_name_id.json")),
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
    }
