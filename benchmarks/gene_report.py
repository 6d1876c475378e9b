"""Gene-identifier report: how each shared dataset's genes map to each backbone's real vocabulary.

Usage (repository root)::

    python benchmarks/gene_report.py                       # Markdown to stdout
    python benchmarks/gene_report.py --out docs/genes.md --json benchmarks/genes/gene_report.json

Uses the backbones' own ``gene_match`` (``registry.instance("backbone", name).gene_match``), the
same code ``sctune validate`` and training use, with the real vocabularies in
``../shared/data/vocab``:

- scGPT: ``scgpt_census_vocab.json`` (60,694 symbols) through the ``vocab`` option, whose reader
  appends ``<pad>``, ``<cls>`` and ``<eoc>`` (60,697 ids, as the whole-human checkpoint's vocab.json);
- Geneformer V1: token dictionary, gene median dictionary and gene name -> Ensembl map (JSON);
- scBERT: its gene order (16,906 symbols of panglao_10000.h5ad) is not available here, so its
  match cannot be computed (the report says so).

It also demonstrates the errors raised by tokenization when nothing maps.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VOCAB = SHARED / "vocab"
DATASETS = [
    "pbmc3k_seurat_labeled.h5ad",
    "zheng_sorted_pbmc_facs.h5ad",
    "pbmc68k_reduced_counts.h5ad",
    "pancreas_xin_scclassify_subset.h5ad",
    "pancreas_wang_scclassify_subset.h5ad",
]

CATEGORIES = [
    (
        "clone-based name (RP11-…, AC…, CTD-…)",
        re.compile(r"^(RP\d+-|CT[ABCD]-|A[CLFP]\d{6}|KB-|XX[a-z]*-|LA16c-)"),
    ),
    ("lncRNA / antisense (LINC…, …-AS1, …-IT1)", re.compile(r"^(LINC|LOC)|-(AS|IT|OT)\d*$")),
    (
        "small RNA (MIR…, SNOR…, Y_RNA, U1…, 7SK)",
        re.compile(r"^(MIR\d|SNOR|SCARNA|Y_RNA|U\d+$|7SK|RNU|RNY|VTRNA)"),
    ),
    ("mitochondrial (MT-…)", re.compile(r"^MT-")),
    ("Ensembl id", re.compile(r"^ENS[A-Z]*G\d+")),
]


def categorise(genes: list[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for g in genes:
        for name, pattern in CATEGORIES:
            if pattern.search(g):
                counts[name] += 1
                break
        else:
            counts["other (renamed / retired symbols, readthrough genes, …)"] += 1
    return dict(counts.most_common())


def _configs(registry: Any) -> dict[str, Any]:
    def make(name: str, options: dict[str, Any]) -> Any:
        return registry.entries["backbone"][name].cls.config_cls.model_validate(options)

    return {
        "scgpt": make("scgpt", {"vocab": str(VOCAB / "scgpt_census_vocab.json")}),
        "geneformer": make(
            "geneformer",
            {
                "token_dictionary": str(VOCAB / "geneformer_v1_token_dictionary.json"),
                "gene_median_dictionary": str(VOCAB / "geneformer_v1_gene_median_dictionary.json"),
                "gene_name_id_dict": str(VOCAB / "geneformer_v1_gene_name_id_dict.json"),
            },
        ),
    }


def _dropped(backbone: str, genes: list[str], config: Any) -> list[str]:
    """Every dropped gene (the GeneMatch only carries a few examples)."""
    if backbone == "scgpt":
        from sctune.backbones.scgpt.weights import read_vocab

        vocab = read_vocab(Path(config.vocab))
        seen, out = set(), []
        for g in genes:
            if g not in vocab or g in seen:
                out.append(g)
            seen.add(g)
        return out
    from sctune.backbones.geneformer.tokenizer import load_vocab, map_columns

    cmap = map_columns(genes, load_vocab(config))
    return [g for g, e in zip(genes, cmap.ensembl) if e is None]


def dataset_rows(registry: Any, path: Path) -> list[dict[str, Any]]:
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r")
    var = adata.var
    genes = [str(g) for g in adata.var_names]
    symbol_col = next(
        (c for c in ("gene_symbol", "gene_symbols", "symbol") if c in var.columns), None
    )
    symbols = [str(s) for s in var[symbol_col]] if symbol_col else None
    adata.file.close()
    configs = _configs(registry)
    rows = []
    for name in ("scgpt", "geneformer"):
        backbone = registry.instance("backbone", name)
        tries = [("var_names", genes)]
        if symbols is not None:
            tries.append((f"var['{symbol_col}']", symbols))
        for source, names in tries:
            m = backbone.gene_match(names, configs[name])
            dropped = _dropped(name, names, configs[name])
            examples = list(m.dropped_examples)[:6]
            if symbols is not None and names is genes:  # show the symbol beside a dropped id
                to_symbol = dict(zip(genes, symbols))
                examples = [f"{g} ({to_symbol[g]})" for g in examples]
                dropped = [to_symbol[g] for g in dropped]  # categorise by symbol
            rows.append(
                {
                    "dataset": path.name,
                    "backbone": name,
                    "genes_from": source,
                    "n_genes": m.n_genes,
                    "n_matched": m.n_matched,
                    "fraction": m.fraction,
                    "namespace": m.namespace,
                    "via": m.via,
                    "vocabulary_size": m.vocabulary_size,
                    "notes": list(m.notes),
                    "dropped_examples": examples,
                    "dropped_categories": categorise(dropped),
                    "n_dropped": len(dropped),
                }
            )
    # which namespace tokenization uses: scGPT and scBERT take the better of var_names / symbol
    # column; Geneformer prefers Ensembl ids (identifiers, then an id column), else symbols
    for r in rows:
        same = [o for o in rows if o["backbone"] == r["backbone"]]
        if r["backbone"] == "scgpt":
            r["used"] = r is max(same, key=lambda o: o["n_matched"])
        else:
            r["used"] = r["genes_from"] == "var_names"
    rows.append(
        {
            "dataset": path.name,
            "backbone": "scbert",
            "genes_from": "var_names",
            "n_genes": len(genes),
            "n_matched": None,
            "used": True,
            "via": "not computable: the panglao 16,906-gene order file is not available here",
        }
    )
    return rows


def _tiny_expression(genes: list[str], symbols: list[str] | None = None) -> Any:
    from scipy import sparse

    from sctune.core.cells import Expression

    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.integers(1, 5, size=(3, len(genes))).astype(np.float32))
    return Expression(
        X=X,
        genes=tuple(genes),
        kind="counts",
        library_size=np.asarray(X.sum(axis=1)).ravel().astype(np.float64),
        cell_ids=("c0", "c1", "c2"),
        gene_symbols=None if symbols is None else tuple(symbols),
    )


def error_demos(registry: Any) -> list[dict[str, Any]]:
    """Tokenize data that cannot map and record the message (or the surprise when it maps)."""
    import anndata as ad

    from sctune.core.errors import SctuneError

    zheng = ad.read_h5ad(SHARED / "zheng_sorted_pbmc_facs.h5ad", backed="r")
    ensembl = [str(g) for g in zheng.var_names[:2000]]
    zheng.file.close()
    mouse_symbols = [
        "Cd3e",
        "Cd19",
        "Ms4a1",
        "Lyz2",
        "Cd14",
        "Nkg7",
        "Gzma",
        "Cd8a",
        "Cd4",
        "Foxp3",
        "Klrb1c",
        "H2-Ab1",
        "Ly6c1",
        "Ptprc",
        "Actb",
        "Gapdh",
    ] * 4
    mouse_ids = [f"ENSMUSG{n:011d}" for n in range(20000, 20064)]
    configs = _configs(registry)
    cases = [
        (
            "scgpt",
            "Ensembl ids (zheng var_names, first 2,000) with no symbol column",
            ensembl,
            configs["scgpt"],
        ),
        ("scgpt", "mouse symbols (Cd3e, Cd19, Ms4a1, …)", mouse_symbols, configs["scgpt"]),
        ("geneformer", "mouse Ensembl ids (ENSMUSG…)", mouse_ids, configs["geneformer"]),
        (
            "geneformer",
            "mouse symbols (Cd3e, Cd19, Ms4a1, …)",
            mouse_symbols,
            configs["geneformer"],
        ),
    ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        # scBERT needs a gene order to fail against; a stand-in of human symbols shows the message
        order = Path(tmp) / "standin_order.txt"
        pbmc = ad.read_h5ad(SHARED / "pbmc3k_seurat_labeled.h5ad", backed="r")
        order.write_text("\n".join(map(str, pbmc.var_names)) + "\n")
        pbmc.file.close()
        scbert_cfg = registry.entries["backbone"]["scbert"].cls.config_cls.model_validate(
            {"gene_order": str(order)}
        )
        cases.append(
            (
                "scbert",
                "Ensembl ids with no symbol column (stand-in order: pbmc3k's symbols)",
                ensembl,
                scbert_cfg,
            )
        )
        for name, what, genes, cfg in cases:
            backbone = registry.instance("backbone", name)
            try:
                tok = backbone.tokenize(_tiny_expression(genes), cfg, seed=0)
                msg = "no error: " + (tok.gene_match.summary() if tok.gene_match else "tokenized")
                ok = False
            except SctuneError as exc:
                msg = exc.render().strip()
                ok = True
            out.append({"backbone": name, "input": what, "raised": ok, "message": msg})
    return out


def _pct(r: dict[str, Any]) -> str:
    return f"{r['n_matched']:,} / {r['n_genes']:,} ({r['fraction']:.1%})"


HEADER = """\
# Gene identifiers: what maps to each backbone's vocabulary

Generated by `python benchmarks/gene_report.py --out docs/genes.md` (repository root; reads
`../shared/data`). Every number comes from the backbones' own `gene_match`, the code that
`sctune validate` and training use, with the real vocabularies in `../shared/data/vocab/`:

- **scGPT**: `scgpt_census_vocab.json`, 60,694 gene symbols, given as the `vocab` option; its reader
  appends `<pad>`, `<cls>`, `<eoc>` (60,697 ids, the same genes as the whole-human checkpoint's
  `vocab.json`). Exact, case-sensitive symbol lookup. Tokenization uses whichever of `var_names`
  and a symbol column (`var['gene_symbol']`, ...) matches more genes; a duplicated symbol keeps its
  first column.
- **Geneformer V1**: token dictionary (25,426), gene median dictionary and the gene name -> Ensembl
  map (40,248 symbols). Identifiers that look like Ensembl ids are used directly (version suffix
  stripped); else an Ensembl id column; else symbols through the name map (exact, then
  case-insensitive, except for mouse-like Title-case symbols, which are matched exactly). A gene is kept when its id is in both the token and the median dictionary;
  columns sharing an id are summed.
- **scBERT**: a gene is its position in the pretraining gene order, the 16,906 symbols of
  `panglao_10000.h5ad`'s `var_names`. **That file is not available here** (scBERT does not
  distribute it; it must be exported from `panglao_10000.h5ad`, which is not in `../shared/data`
  either), so scBERT's match **cannot be computed**. With random initialisation the order is the
  data's own genes, so the match is 100 % by construction and says nothing. Matching is exact on
  symbols (the better of `var_names` and a symbol column); genes of the order that the data lacks
  read 0.

"matched" counts data columns that reach the model. "(not used)" marks the namespace that
tokenization does not pick for that dataset.

"""

FOOTER = """
## Reading the tables

- The PBMC sets carry hg19-era 10x names. Most losses on both backbones are clone-based names
  (`RP11-…`, `AC…`, `CTD-…`) and renamed or retired symbols (`FAM132A` is now `C1QTNF12`,
  `ATPIF1` is `ATP5IF1`, `CCBL2` is `KYAT3`), which neither vocabulary lists under the old name.
- Geneformer loses more than scGPT on symbol data: the name map knows 40,248 symbols, but only
  21,245 of its Ensembl ids are in the token dictionary (see the "mapped ids are not in the
  dictionaries" notes), and many lncRNA/antisense genes that scGPT knows are not in Geneformer's dictionary.
- Zheng has Ensembl ids in `var_names` and symbols in `var['gene_symbol']`. Geneformer uses the ids
  directly (82.8 %; going through the symbols would give 75.7 %); scGPT finds 0 ids in its symbol
  vocabulary and switches to the symbol column automatically (88.0 %; 6 duplicated symbols keep
  their first column).
- The two log-normalised pancreas panels match almost fully for scGPT; Geneformer additionally
  refuses their log-normalised values unless `allow_lognorm: true`.
- **No silent cross-species mapping**: mouse-style Title-case symbols (`Cd3e`, `Ms4a1`) are looked
  up exactly, never case-insensitively, so neither backbone pairs them with the human genes of
  the same spelling; both refuse with a mouse hint. (An earlier version matched 75 % of them to
  human genes through a case-insensitive fallback.)
"""


def render(rows: list[dict[str, Any]], demos: list[dict[str, Any]]) -> str:
    lines = [
        HEADER + "## Matches per dataset and backbone\n",
        "| dataset | backbone | genes from | matched | namespace | via | dropped, e.g. |",
        "|---|---|---|---:|---|---|---|",
    ]
    for r in rows:
        if r["n_matched"] is None:
            lines.append(
                f"| {r['dataset']} | {r['backbone']} | {r['genes_from']} | – | – | {r['via']} | – |"
            )
            continue
        used = "" if r.get("used") else " (not used)"
        ex = ", ".join(f"`{g}`" for g in r["dropped_examples"][:4]) or "–"
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['genes_from']}{used} | {_pct(r)} | "
            f"{r['namespace']} | {r['via']} | {ex} |"
        )
    lines.append("")
    lines.append("## What is dropped\n")
    lines.append("Dropped columns of the namespace tokenization uses, grouped by name pattern:\n")
    lines.append("| dataset | backbone | dropped | breakdown | notes |")
    lines.append("|---|---|---:|---|---|")
    for r in rows:
        if r["n_matched"] is None or not r.get("used"):
            continue
        cats = "; ".join(f"{k}: {v:,}" for k, v in r["dropped_categories"].items()) or "–"
        notes = "; ".join(r["notes"]) or "–"
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['n_dropped']:,} | {cats} | {notes} |"
        )
    lines.append("")
    lines.append("## When nothing maps\n")
    lines.append("Tokenizing small synthetic inputs (3 cells) whose genes cannot map:\n")
    lines.append("| backbone | input | result |")
    lines.append("|---|---|---|")
    for d in demos:
        msg = d["message"].replace("\n", "<br>").replace("|", "\\|")
        lines.append(
            f"| {d['backbone']} | {d['input']} | {'error: ' if d['raised'] else '**'}"
            f"`{msg}`{'' if d['raised'] else '**'} |"
        )
    return "\n".join(lines) + "\n" + FOOTER


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the Markdown tables here (default: stdout)")
    ap.add_argument("--json", help="also write the raw rows as JSON")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 1
    from sctune import api

    registry = api.get_registry()
    rows: list[dict[str, Any]] = []
    for ds in DATASETS:
        if (SHARED / ds).is_file():
            rows += dataset_rows(registry, SHARED / ds)
    demos = error_demos(registry)
    text = render(rows, demos)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "errors": demos}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
