"""``sctune predict``: rebuild a run's model from its adapter-only files and annotate new cells."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sctune.core import artifacts as A
from sctune.core.errors import CheckpointError, DataError


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
            hint="give the query the same kind of gene identifiers the run was trained on",
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


def predict_h5ad(
    run_dir: Path,
    query: str,
    output: Path,
    registry: Any,
    *,
    checkpoint: Path | None,
    batch_size: int | None,
    overwrite: bool = False,
) -> Path:
    from sctune.core.data import load_data
    from sctune.core.recipe import DataConfig, output_dir_problem
    from sctune.core.trainer import embed_and_score, make_accelerator

    problem = output_dir_problem(output.parent, key="--output")
    if problem:
        raise CheckpointError(problem.replace("output.dir", "--output"))
    if output.exists() and not (overwrite and output.is_file()):
        raise CheckpointError(
            f"--output: '{output}' already exists; nothing was overwritten",
            hint="choose another path, or pass --overwrite (overwrite=True) to replace that file",
        )
    backbone, bcfg, asm, task, task_cfg, prepared, manifest, recipe = rebuild(
        run_dir, registry, checkpoint=checkpoint
    )
    dcfg = manifest["data"]
    seed = int(manifest.get("seed", 0))
    where = "query"  # errors name the query argument, not the run's data.path
    if not str(query).strip():
        raise DataError("query: the query path is empty; give the .h5ad file to annotate")
    data = load_data(
        DataConfig(
            path=query,
            label_column=dcfg["label_column"],
            gene_column=dcfg["gene_column"],
            source=dcfg["source"],
            kind=dcfg["kind"],
        ),
        seed=seed,
        require_labels=False,
        where=where,
    )
    query_gene_coverage(run_dir, data.expression.genes, f"query '{query}'", dcfg["gene_column"])
    cells = backbone.tokenize(data.expression, bcfg, seed=seed)
    from types import SimpleNamespace

    trainer = recipe.get("trainer", {})  # the run's own inference settings, so outputs match it
    precision = str(trainer.get("precision", "32"))
    acc = make_accelerator(SimpleNamespace(precision=precision, device="auto"))
    batch_size = batch_size or int(trainer.get("eval_batch_size", 64))
    asm.model.to(acc.device)
    for h in asm.merged_for_inference():
        h.merge()
    emb, logits = embed_and_score(asm.model, cells, batch_size, acc)
    if (run_dir / A.REFERENCE).is_file():  # zero-shot run: kNN against the saved reference
        ref = A.load_tensors(run_dir / A.REFERENCE)
        logits = task.transfer(
            ref["embeddings"].numpy(), ref["targets"].numpy(), emb, prepared, task_cfg
        )
    columns = task.annotate(logits, prepared)
    from sctune.core.data import read_adata

    out = read_adata(query, where=where)
    for name, values in columns.items():  # the task's own columns
        out.obs[name] = values
    out.obsm["X_sctune"] = emb.astype(np.float32)
    out.uns["sctune"] = {
        "run_dir": str(run_dir),
        "backbone": manifest["backbone"]["name"],
        "adapters": [a["name"] for a in manifest["adapters"]],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    out.write_h5ad(tmp)
    tmp.replace(output)  # atomic: a failed write leaves the old file
    return output
