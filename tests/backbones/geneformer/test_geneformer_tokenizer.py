"""Geneformer rank-value tokenizer: order, truncation, specials, mapping, refusals."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from sctune.core.errors import DataError


def _dicts(cfg):
    tokens = json.loads(Path(cfg["token_dictionary"]).read_text())
    medians = json.loads(Path(cfg["gene_median_dictionary"]).read_text())
    names = json.loads(Path(cfg["gene_name_id_dict"]).read_text())
    return tokens, medians, names


def _expected(row, genes, tokens, medians, names, budget):
    vals = {}
    for g, x in zip(genes, row):
        if x > 0:
            e = names[g]
            vals[e] = vals.get(e, 0.0) + x
    lib = row.sum()
    norm = {e: v / lib * 1e4 / medians[e] for e, v in vals.items()}
    order = sorted(norm, key=lambda e: -norm[e])
    return [tokens[e] for e in order][:budget]


def test_v1_orders_by_normalised_value(
    tiny_v1, backbone, make_config, make_expr, genes, random_counts
):
    X = random_counts(20, len(genes))
    tokens, medians, names = _dicts(tiny_v1)
    out = backbone.tokenize(make_expr(X, genes), make_config(tiny_v1), seed=0)
    assert out.meta["version"] == "v1" and out.gene_match.fraction == 1.0
    for i in range(20):
        got = list(out.fields["input_ids"][i])
        want = _expected(X[i], genes, tokens, medians, names, 64)
        # ties may order differently; compare the normalised values in emitted order
        inv = {v: k for k, v in tokens.items()}
        vals = [
            X[i][genes.index(next(g for g in genes if names[g] == inv[t]))] / medians[inv[t]]
            for t in got
        ]
        assert sorted(got) == sorted(want)
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(vals))
        assert len(got) == int((X[i] > 0).sum())


def test_library_size_and_medians_change_nothing_but_values(
    tiny_v1, backbone, make_config, make_expr, genes
):
    tokens, medians, names = _dicts(tiny_v1)
    # two genes with equal counts: the one with the smaller median ranks first
    g1, g2 = genes[0], genes[1]
    X = np.zeros((1, len(genes)))
    X[0, 0] = X[0, 1] = 5
    first = g1 if medians[names[g1]] < medians[names[g2]] else g2
    out = backbone.tokenize(
        make_expr(X, genes, library_size=np.array([1e6])), make_config(tiny_v1), seed=0
    )
    assert out.fields["input_ids"][0][0] == tokens[names[first]]


def test_truncation_and_v2_specials(
    tiny_v1, tiny_v2, backbone, make_config, make_expr, genes, random_counts
):
    X = random_counts(5, len(genes), density=1.0) + 1
    v1 = backbone.tokenize(make_expr(X, genes), make_config(tiny_v1, max_input_size=10), seed=0)
    full = backbone.tokenize(make_expr(X, genes), make_config(tiny_v1), seed=0)
    assert all(len(t) == 10 for t in v1.fields["input_ids"])
    assert all(
        list(a) == list(b[:10]) for a, b in zip(v1.fields["input_ids"], full.fields["input_ids"])
    )
    v2tok = json.loads(Path(tiny_v2["token_dictionary"]).read_text())
    v2 = backbone.tokenize(make_expr(X, genes), make_config(tiny_v2, max_input_size=10), seed=0)
    assert v2.meta["version"] == "v2"
    for t in v2.fields["input_ids"]:
        assert len(t) == 10 and t[0] == v2tok["<cls>"] and t[-1] == v2tok["<eos>"]
        assert v2tok["<cls>"] not in t[1:-1] and v2tok["<eos>"] not in t[1:-1]
    forced = backbone.tokenize(make_expr(X, genes), make_config(tiny_v2, version="v1"), seed=0)
    assert forced.meta["version"] == "v1" and forced.fields["input_ids"][0][0] != v2tok["<cls>"]
    batch = v2.collate([v2[0], v2[1]])
    assert batch["input_ids"].dtype.is_floating_point is False
    with pytest.raises(Exception, match="exceeds the model's 64 position"):
        backbone.tokenize(make_expr(X, genes), make_config(tiny_v1, max_input_size=100), seed=0)


def test_ensembl_identifiers_duplicates_summed_and_versions(
    tiny_v1, backbone, make_config, make_expr, genes
):
    tokens, medians, names = _dicts(tiny_v1)
    ens = [names[g] for g in genes]
    cols = [ens[0] + ".7", ens[1], ens[1], ens[2], "ENSG99999999999"]
    X = np.array([[1.0, 3.0, 3.0, 5.0, 100.0]])
    out = backbone.tokenize(
        make_expr(X, cols, library_size=np.array([1000.0])),
        make_config(tiny_v1, min_gene_match=0.1),
        seed=0,
    )
    m = out.gene_match
    assert (m.n_matched, m.namespace, m.via) == (4, "ensembl", "identifier")
    assert "ENSG99999999999" in m.dropped_examples
    assert any("summed" in n for n in m.notes)
    vals = {ens[0]: 1 / medians[ens[0]], ens[1]: 6 / medians[ens[1]], ens[2]: 5 / medians[ens[2]]}
    want = [tokens[e] for e in sorted(vals, key=lambda e: -vals[e])]
    assert list(out.fields["input_ids"][0]) == want


def test_symbols_map_and_gene_ids_column(
    tiny_v1, backbone, make_config, make_expr, genes, random_counts
):
    names = json.loads(Path(tiny_v1["gene_name_id_dict"]).read_text())
    cfg = make_config(tiny_v1, min_gene_match=0.1)
    match = backbone.gene_match([g.lower() for g in genes] + ["NOTAGENE"], cfg)
    assert match.n_matched == len(genes) and match.via.startswith("symbol -> ensembl")
    assert match.dropped_examples == ("NOTAGENE",)
    X = random_counts(4, len(genes))
    by_symbol = backbone.tokenize(make_expr(X, genes), cfg, seed=0)
    ids = tuple(names[g] for g in genes)
    by_column = backbone.tokenize(
        make_expr(X, [f"x{i}" for i in range(len(genes))], gene_ids=ids), cfg, seed=0
    )
    assert by_column.gene_match.via.startswith("the Ensembl id column")
    for a, b in zip(by_symbol.fields["input_ids"], by_column.fields["input_ids"]):
        assert list(a) == list(b)


def test_refusals(tiny_v1, backbone, make_config, make_expr, genes, random_counts):
    X = random_counts(3, len(genes))
    cfg = make_config(tiny_v1)
    with pytest.raises(DataError, match="needs raw counts, but the expression is 'lognorm'") as e:
        backbone.tokenize(make_expr(np.log1p(X), genes, kind="lognorm"), cfg, seed=0)
    assert "allow_lognorm" in e.value.hint
    approx = backbone.tokenize(
        make_expr(np.log1p(X / X.sum(1, keepdims=True) * 1e4), genes, kind="lognorm"),
        make_config(tiny_v1, allow_lognorm=True),
        seed=0,
    )
    exact = backbone.tokenize(make_expr(X, genes), cfg, seed=0)
    assert approx.meta["lognorm_approximation"] is True
    assert [sorted(a) for a in approx.fields["input_ids"]] == [
        sorted(b) for b in exact.fields["input_ids"]
    ]
    with pytest.raises(DataError, match="scaled"):
        backbone.tokenize(make_expr(X - 1, genes, kind="scaled"), cfg, seed=0)
    mouse = ["Cd3e", "Cd4", "Ms4a1", "Lyz2", "Nkg7"]
    with pytest.raises(DataError, match="none of the 5 genes") as e:
        backbone.tokenize(
            make_expr(random_counts(2, 5), ["ENSMUSG0000000000" + str(i) for i in range(5)]),
            cfg,
            seed=0,
        )
    assert "mouse" in e.value.hint
    with pytest.raises(DataError, match="none of the 5 genes"):
        backbone.tokenize(make_expr(random_counts(2, 5), [m + "x" for m in mouse]), cfg, seed=0)
    few = genes[:2] + [f"G{i}" for i in range(10)]
    with pytest.raises(DataError, match="'min_gene_match' is 0.5"):
        backbone.tokenize(make_expr(random_counts(2, 12), few), cfg, seed=0)
    empty = X.copy()
    empty[1] = 0
    with pytest.raises(DataError, match="1 cells express no gene"):
        backbone.tokenize(make_expr(empty, genes), cfg, seed=0)


def test_mouse_symbols_never_map_case_insensitively(backbone, shared_data):
    """'Cd3e' must not be paired with human 'CD3E' by spelling (real V1 dictionaries)."""
    vocab = shared_data / "vocab"
    cfg = backbone.config_cls(
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        token_dictionary=str(vocab / "geneformer_v1_token_dictionary.json"),
        gene_median_dictionary=str(vocab / "geneformer_v1_gene_median_dictionary.json"),
        gene_name_id_dict=str(vocab / "geneformer_v1_gene_name_id_dict.json"),
    )
    human = ["CD3E", "CD4", "MS4A1", "LYZ", "NKG7", "GNLY"]
    mouse = ["Cd3e", "Cd4", "Ms4a1", "Lyz2", "Nkg7", "Gzma"]
    assert backbone.gene_match(human, cfg).n_matched == 6
    assert backbone.gene_match(mouse, cfg).n_matched == 0


def test_rank_order_is_the_three_key_lexsort() -> None:
    """The two stable sorts give exactly lexsort's order (row, value descending, stored
    position), ties and empty rows included."""
    from scipy import sparse

    from sctune.backbones.geneformer.tokenizer import rank_order

    rng = np.random.default_rng(3)
    X = sparse.random(300, 50, density=0.3, format="csr", random_state=3)
    X.data = rng.integers(1, 4, X.nnz).astype(float)  # many ties
    X[5] = 0  # an empty row
    X.eliminate_zeros()
    X.sort_indices()
    row_of = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    want = np.lexsort((X.indices, -X.data, row_of))
    np.testing.assert_array_equal(rank_order(row_of, X.data), want)
