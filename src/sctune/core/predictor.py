"""``sctune predict``: rebuild a run's model from its adapter-only files and annotate new cells."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sctune.core import artifacts as A
from sctune.core.errors import CheckpointError, DataError
from sctune.core.preprocess import keep_genes


def _rebase(value: Any, old: str, new: Path) -> Any:
    """Point paths that lived inside the original run directory at its current location."""
    if isinstance(value, str) and old and value.startswith(old):
        return str(new / Path(value).relative_to(old))
    return value


def _explicit(config_cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options equal to their defaults, so the rebuilt config marks only real choices as set.

    ``adapter.json`` stores the full config dump; validators that compare explicitly set keys with
    a checkpoint (scGPT's architecture vs ``args.json``) must not see defaults as choices.
    """
    out = {}
    for key, value in options.items():
        field = config_cls.model_fields.get(key)
        if field is None:  # an alias (e.g. geneformer's 'model_config'): keep it
            field = next((f for f in config_cls.model_fields.values() if f.alias == key), None)
        if field is not None and not field.is_required():
            default = field.get_default(call_default_factory=True)
            if value == default or (isinstance(default, Path) and value == str(default)):
                continue
        out[key] = value
    return out


def _same_options(name: str, rebuilt: dict[str, Any], saved: dict[str, Any]) -> None:
    """The rebuilt backbone options must be the run's: a plugin whose validation fills in options
    (a shipped checkpoint's) could otherwise rebuild another model than the one trained."""
    differ = [k for k in saved if k in rebuilt and _norm(rebuilt[k]) != _norm(saved[k])]
    if differ:
        shown = "\n  ".join(f"{k}: {saved[k]!r} in the run, {rebuilt[k]!r} now" for k in differ)
        raise CheckpointError(
            f"backbone '{name}' rebuilds with other options than the run was trained with\n  "
            + shown,
            hint="the installed sctune or plugin reads these options differently from the one that "
            "trained the run; rerun the recipe with this version",
        )


def _norm(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"'{path.parent}' is not a complete sctune run directory: '{path.name}' is missing"
        ) from exc
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(
            f"'{path}' is not a readable recipe ({type(exc).__name__})",
            hint="the run directory is damaged; rerun the recipe, or restore the file from a copy",
        ) from exc
    if not isinstance(recipe, dict):
        raise CheckpointError(f"'{path}' does not hold a recipe mapping")
    return recipe


def rebuild(run_dir: Path, registry: Any, *, checkpoint: Path | None = None) -> tuple[Any, ...]:
    """Return ``(backbone, bcfg, asm, task, prepared, manifest, recipe)`` with trained tensors loaded."""
    from sctune.core.assembly import assemble

    manifest = A.read_json(run_dir / A.MANIFEST)
    recipe = _read_recipe(run_dir / A.RECIPE)
    bname = manifest["backbone"]["name"]
    backbone = registry.instance("backbone", bname)
    options = {
        k: _rebase(v, manifest.get("run_dir", ""), run_dir.resolve())
        for k, v in manifest["backbone"]["config"].items()
    }
    if checkpoint is not None:
        if "checkpoint" not in options:
            raise CheckpointError(f"backbone '{bname}' takes no checkpoint option")
        options["checkpoint"] = str(checkpoint)
    bcfg = backbone.config_cls.model_validate(_explicit(backbone.config_cls, options))
    if checkpoint is None:
        _same_options(bname, bcfg.model_dump(mode="json"), options)
    saved, now = manifest["backbone"]["fingerprint"], backbone.fingerprint(bcfg)
    diff = [k for k in saved if saved.get(k) != now.get(k)]
    if diff:
        raise CheckpointError(
            f"run '{run_dir}' was trained on a different backbone '{bname}': "
            + ", ".join(
                f"{k} sha256 {saved[k][:12]}… in the run, {str(now.get(k))[:12]}… now"
                for k in diff
            ),
            hint="use the checkpoint and vocabulary the run was trained with (see adapter.json)",
        )
    task = registry.instance("task", manifest["task"]["name"])
    task_cfg = task.config_cls.model_validate(manifest["task"]["config"])
    prepared = task.from_state(A.read_json(run_dir / A.LABELS))
    adapters = []
    for a in manifest["adapters"]:
        plugin = registry.instance("adapter", a["name"])
        adapters.append((plugin, plugin.config_cls.model_validate(a["config"])))
    module = backbone.build(bcfg)
    drawn = manifest.get("backbone_weights")
    if drawn:  # randomly initialised backbone: the run saved the weights it drew
        _load_backbone_weights(module, run_dir / drawn["file"], drawn["sha256"])
    asm = assemble(backbone, bcfg, adapters, task, task_cfg, prepared, module=module)
    A.load_into(
        asm.model,
        A.load_tensors(run_dir / A.ADAPTER_WEIGHTS),
        what=f"'{run_dir / A.ADAPTER_WEIGHTS}'",
    )
    A.load_into(
        asm.model, A.load_tensors(run_dir / A.HEAD_WEIGHTS), what=f"'{run_dir / A.HEAD_WEIGHTS}'"
    )
    return backbone, bcfg, asm, task, task_cfg, prepared, manifest, recipe


def _load_backbone_weights(module: Any, path: Path, sha256: str) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"run directory is missing '{path.name}', the randomly initialised backbone's weights "
            f"({path})",
            hint="copy the whole run directory; without this file the model cannot be rebuilt",
        )
    if A.sha256_file(path) != sha256:
        raise CheckpointError(
            f"'{path}' changed since the run wrote it (sha256 differs from adapter.json)",
            hint="restore the run directory from a copy, or rerun the recipe",
        )
    tensors = A.load_tensors(path)
    expected = set(module.state_dict())
    if set(tensors) != expected:
        raise CheckpointError(
            f"'{path}' does not fit the rebuilt backbone: "
            f"{len(expected - set(tensors))} tensors missing, {len(set(tensors) - expected)} unknown"
        )
    A.load_into(module, tensors, what=f"'{path}'")


MIN_QUERY_COVERAGE = 0.5  # below this share of the run's genes, predict warns


def run_gene_list(run_dir: Path) -> list[str] | None:
    """The run's genes (``genes.txt``) in order, or ``None`` when the run lists none."""
    path = run_dir / A.GENES
    if not path.is_file():
        return None
    genes = [g for g in path.read_text(encoding="utf-8").splitlines() if g]
    return genes or None


def in_run_namespace(expr: Any, run_genes: list[str] | None) -> Any:
    """``expr`` with the query's identifiers that name the run's genes as its ``genes``.

    A run keeps its genes in one namespace (``genes.txt``); several training files may have
    been mapped to it through a symbol or Ensembl id column (``var['gene_symbol']``,
    ``var['gene_ids']``). A query that names its genes the other way but carries such a column
    (one of the run's own files, say) is read through that column, as the run read it.
    """
    if not run_genes:
        return expr
    wanted = set(run_genes)

    def hits(names: Any) -> int:
        return 0 if names is None else len(wanted.intersection(map(str, names)))

    own = hits(expr.genes)
    best = max(
        (("gene_symbols", expr.gene_symbols), ("gene_ids", expr.gene_ids)),
        key=lambda item: hits(item[1]),
    )
    if hits(best[1]) <= own:
        return expr
    from sctune.core.cells import looks_like_ensembl

    moved = "gene_ids" if looks_like_ensembl(expr.genes) else "gene_symbols"
    return replace(expr, **{best[0]: None, moved: expr.genes}, genes=tuple(best[1]))


def query_gene_coverage(
    run_dir: Path, genes: Any, where: str, gene_column: str | None
) -> float | None:
    """Share of the RUN's genes (``genes.txt``) present in the query; warn below
    :data:`MIN_QUERY_COVERAGE`, refuse at zero. ``None`` when the run lists no genes."""
    import warnings

    from sctune.core.errors import SctuneWarning

    path = run_dir / A.GENES
    if not path.is_file():
        return None
    run_genes = list(dict.fromkeys(g for g in path.read_text(encoding="utf-8").splitlines() if g))
    if not run_genes:
        return None
    have = set(map(str, genes))
    missing = [g for g in run_genes if g not in have]
    covered = len(run_genes) - len(missing)
    share = covered / len(run_genes)
    text = f"{where} has {covered:,} of the run's {len(run_genes):,} genes ({share:.0%})"
    column = f"adata.var['{gene_column}']" if gene_column else "var_names"
    if covered == 0:
        seen = ", ".join(f"'{g}'" for g in list(have)[:3])
        raise DataError(
            f"{text}: the run's genes (e.g. {', '.join(repr(g) for g in run_genes[:3])}) are "
            f"read from the query's {column}, which holds e.g. {seen}",
            hint="give the query the same kind of gene identifiers the run was trained on, "
            "in var_names or in a var column such as var['gene_symbol'] or var['gene_ids']",
        )
    if share < MIN_QUERY_COVERAGE:
        warnings.warn(
            f"{text}; the {len(missing):,} missing genes (e.g. "
            f"{', '.join(repr(g) for g in missing[:3])}) read as zero, so predictions may be "
            "unreliable",
            SctuneWarning,
            stacklevel=2,
        )
    return share


DEFAULT_CHUNK = 20_000  # cells read, tokenized and embedded at a time by ``sctune predict``


def predict_h5ad(
    run_dir: Path,
    query: str,
    output: Path,
    registry: Any,
    *,
    checkpoint: Path | None,
    batch_size: int | None,
    overwrite: bool = False,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Path:
    """Annotate ``query`` in chunks of ``chunk_size`` cells (default :data:`DEFAULT_CHUNK`).

    An ``.h5ad`` file is opened backed (``X`` stays on disk): each chunk of rows is read,
    checked, tokenized, embedded and scored, and its embeddings are written straight into the
    output, a copy of the query file, so memory does not grow with the number of cells. Each
    chunk is tokenized with the run's seed, so a query of at most ``chunk_size`` cells gives
    exactly what one pass over all of it gives (the run's own predictions on its own cells);
    larger queries differ only in the random tie-breaking of equal expression bins.
    """
    from types import SimpleNamespace

    from sctune.core.data import (
        MAX_EMPTY_CELLS,
        check_empty_cells,
        loaded_from_adata,
        read_adata,
    )
    from sctune.core.recipe import DataConfig, output_dir_problem
    from sctune.core.trainer import embed_and_score, make_accelerator, model_input_arrays

    problem = output_dir_problem(output.parent, key="--output")
    if problem:
        raise CheckpointError(problem.replace("output.dir", "--output"))
    if output.exists() and not (overwrite and output.is_file()):
        raise CheckpointError(
            f"--output: '{output}' already exists; nothing was overwritten",
            hint="choose another path, or pass --overwrite (overwrite=True) to replace that file",
        )
    if chunk_size is not None and chunk_size < 1:
        raise DataError(f"--chunk-size: {chunk_size} is not a positive number of cells")
    backbone, bcfg, asm, task, task_cfg, prepared, manifest, recipe = rebuild(
        run_dir, registry, checkpoint=checkpoint
    )
    dcfg = manifest["data"]
    seed = int(manifest.get("seed", 0))
    where = "query"  # errors name the query argument, not the run's data.path
    if not str(query).strip():
        raise DataError("query: the query path is empty; give the .h5ad file to annotate")
    cfg = DataConfig(
        path=query,
        label_column=dcfg["label_column"],
        gene_column=dcfg["gene_column"],
        source=dcfg["source"],
        kind=dcfg["kind"],
    )
    src = read_adata(query, where=where, backed=True)
    n = int(src.n_obs)
    if n == 0 or src.n_vars == 0:  # the same message as an in-memory load gives
        loaded_from_adata(src, cfg, name=Path(query).name, where=where, require_labels=False)
    trainer = recipe.get("trainer", {})  # the run's own inference settings, so outputs match it
    precision = str(trainer.get("precision", "32"))
    acc = make_accelerator(SimpleNamespace(precision=precision, device="auto"))
    batch_size = batch_size or int(trainer.get("eval_batch_size", 64))
    asm.model.to(acc.device)
    for h in asm.merged_for_inference():
        h.merge()
    ref = A.load_tensors(run_dir / A.REFERENCE) if (run_dir / A.REFERENCE).is_file() else None
    chunk = chunk_size or DEFAULT_CHUNK
    # the task's per-cell model inputs (e.g. each cell's batch for DSBN) come from the new cells'
    # targets, computed from obs alone: the query's genes need not include the run's
    needs_inputs = bool(type(task).model_input_fields(task_cfg))
    # data.hvg: the run kept its genes.txt only; new cells keep the same ones
    listed = run_gene_list(run_dir)
    run_genes = listed if dcfg.get("hvg") is not None else None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    is_file = getattr(src, "isbacked", False)
    writer = _H5Writer(Path(query), tmp) if is_file else None
    columns: dict[str, list[Any]] = {}
    embeddings: list[np.ndarray] = []
    empty = 0  # cells without counts, over every chunk
    bar = cell_progress(progress, n)
    import contextlib
    import warnings

    try:
        with bar or contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("once")  # a warning about the data: once, not per chunk
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                part = src[lo:hi].to_memory() if is_file else src[lo:hi]
                data = loaded_from_adata(
                    part,
                    cfg,
                    name=Path(query).name,
                    where=where,
                    require_labels=False,
                    check_empty=False,  # judged once over the whole query, below
                )
                empty += data.empty_cells
                if empty > MAX_EMPTY_CELLS * n:  # refused whatever the rest holds: stop now
                    check_empty_cells(
                        empty, n, chosen=data.source, name=Path(query).name, origin=where
                    )
                data = replace(data, expression=in_run_namespace(data.expression, listed))
                if lo == 0:
                    query_gene_coverage(
                        run_dir, data.expression.genes, f"query '{query}'", dcfg["gene_column"]
                    )
                if run_genes is not None:
                    data = replace(data, expression=keep_genes(data.expression, run_genes))
                cells = backbone.tokenize(data.expression, bcfg, seed=seed)
                inputs = None
                if needs_inputs:
                    targets = task.targets(data.labels, prepared, obs=data.obs, expression=None)
                    inputs = model_input_arrays(task, targets, prepared, task_cfg)
                emb, logits = embed_and_score(asm.model, cells, batch_size, acc, inputs=inputs)
                if ref is not None:  # zero-shot run: kNN against the saved reference
                    logits = task.transfer(
                        ref["embeddings"].numpy(), ref["targets"].numpy(), emb, prepared, task_cfg
                    )
                for name, values in task.annotate(logits, prepared).items():
                    columns.setdefault(name, []).append(np.asarray(values))
                if writer is not None:
                    writer.embeddings(lo, n, emb.astype(np.float32))
                else:
                    embeddings.append(emb.astype(np.float32))
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=hi - lo)
        check_empty_cells(empty, n, chosen=data.source, name=Path(query).name, origin=where)
        merged = {k: np.concatenate(v) for k, v in columns.items()}
        uns = {
            "run_dir": str(run_dir),
            "backbone": manifest["backbone"]["name"],
            "adapters": [a["name"] for a in manifest["adapters"]],
        }
        if writer is not None:
            writer.finish(merged, uns)
        else:
            out = src
            for name, values in merged.items():  # the task's own columns
                out.obs[name] = values
            out.obsm["X_sctune"] = np.concatenate(embeddings)
            out.uns["sctune"] = uns
            out.write_h5ad(tmp)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if is_file:
            src.file.close()
    tmp.replace(output)  # atomic: a failed write leaves the old file
    return output


class _H5Writer:
    """The output h5ad: a byte copy of the query, then obs columns, obsm and uns edited in place.

    Embeddings go to ``obsm/X_sctune`` chunk by chunk, so they are never all in memory.
    """

    def __init__(self, query: Path, target: Path) -> None:
        import shutil

        import h5py  # type: ignore[import-untyped]

        shutil.copyfile(query, target)
        self.file = h5py.File(target, "r+")
        self.dataset: Any = None

    def embeddings(self, lo: int, n: int, emb: np.ndarray) -> None:
        if self.dataset is None:
            obsm = self.file.require_group("obsm")
            if not obsm.attrs:
                obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
            if "X_sctune" in obsm:
                del obsm["X_sctune"]
            self.dataset = obsm.create_dataset(
                "X_sctune", shape=(n, emb.shape[1]), dtype=np.float32,
                chunks=(min(n, 4096), emb.shape[1]),
            )  # fmt: skip
            self.dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self.dataset[lo : lo + len(emb)] = emb

    def finish(self, columns: dict[str, np.ndarray], uns: dict[str, Any]) -> None:
        import pandas as pd

        try:
            from anndata.io import read_elem, write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import read_elem, write_elem

        obs = read_elem(self.file["obs"])
        for name, values in columns.items():
            obs[name] = pd.Categorical(values) if values.dtype.kind in "OUS" else values
        del self.file["obs"]
        write_elem(self.file, "obs", obs)
        group = self.file.require_group("uns")
        if not group.attrs:
            group.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        if "sctune" in group:
            del group["sctune"]
        write_elem(group, "sctune", uns)
        self.close()

    def close(self) -> None:
        if self.file:
            self.file.close()


def cell_progress(enabled: bool, total: int, what: str = "annotating") -> Any:
    """A rich progress bar over cells, on an interactive stderr only."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
    )  # fmt: skip
    bar.add_task("cells", total=total)
    return bar
