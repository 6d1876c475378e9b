"""The grid file: schema, validation (located errors, did-you-mean) and expansion into cells.

A grid (``sctune bench GRID.yaml``; a shipped one by name, e.g. ``paper_small``)::

    bench: 1                          # schema version
    name: my_grid                     # results go to bench/<name> unless out: or --out
    seeds: 3                          # a count (0, 1, 2) or a list of seeds
    set: {trainer.epochs: 10}         # dotted keys applied to every cell
    backbones:                        # each: a base recipe (shipped name or file) + overrides
      scgpt: {recipe: scgpt/small_lora_cell_type}
    methods:                          # each: the adapter section(s) + per-method overrides
      lora: {adapter: {name: lora, rank: 8}}
      prefix: {adapter: {name: prefix_prompt, num_tokens: 8}, set: {trainer.optimizer.lr: 3.0e-3}}
    datasets:                         # each: the recipe's data section (+ optional: true)
      pbmc68k: {data: {path: scanpy:pbmc68k_reduced, label_column: cell_type}}
    tasks:                            # each: its task section and the datasets it runs on
      cell_type: {datasets: [pbmc68k]}
    rules:                            # overrides for the cells a 'when' matches
      - {when: {backbone: geneformer}, set: {data.path: scanpy:pbmc68k_reduced_counts}}
    baselines: {per_backbone: [full, head, zero_shot], cell_type: [logreg, knn_pca]}
    stats: {compare_to: [full, logreg], compare_to_batch: [full, harmony], bootstrap: 2000}

A cell's recipe is built in this order: the backbone's recipe; ``set``; the dataset's ``data``
section (replacing the recipe's); the task section (merged into the recipe's when it names the
same task, else replacing it); the task's, dataset's and backbone's ``set``; the method's
``adapter`` and ``set``; matching ``rules`` in order; then ``seed``, ``data.split.file`` (the
shared split) and ``output``. Relative paths written in the grid resolve against its folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sctune.core.errors import RecipeError, did_you_mean, quoted

GRIDS_DIR = Path(__file__).resolve().parent / "grids"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CELL_BASELINES = ("logreg", "knn_pca")
BATCH_BASELINES = ("pca", "harmony")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSpec(_Strict):
    recipe: str = Field(description="base recipe: a shipped recipe name or a recipe file")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys for its cells")


class MethodSpec(_Strict):
    adapter: dict[str, Any] | list[dict[str, Any]] = Field(
        description="the recipe's adapter section (or a list of them)"
    )
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys for its cells")


class DatasetSpec(_Strict):
    data: dict[str, Any] = Field(description="the recipe's data section (path, label_column, ...)")
    optional: bool = Field(
        False, description="skip the dataset with a message when its files are absent"
    )
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys for its cells")


class TaskSpec(_Strict):
    datasets: list[str] = Field(min_length=1, description="datasets this task runs on")
    task: dict[str, Any] = Field(default_factory=dict, description="task section options")
    methods: list[str] | None = Field(None, description="a subset of methods (default all)")
    backbones: list[str] | None = Field(None, description="a subset of backbones (default all)")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys for its cells")


class RuleSpec(_Strict):
    when: dict[Literal["backbone", "method", "dataset", "task"], str | list[str]]
    set: dict[str, Any]


def _cell_baselines() -> list[Literal["logreg", "knn_pca"]]:
    return ["logreg", "knn_pca"]


def _batch_baselines() -> list[Literal["pca", "harmony"]]:
    return ["pca", "harmony"]


class BaselineSpec(_Strict):
    per_backbone: list[str] = Field(
        default_factory=lambda: ["full", "head", "zero_shot"],
        description="adapter methods added for every backbone unless 'methods' defines them",
    )
    cell_type: list[Literal["logreg", "knn_pca"]] = Field(default_factory=_cell_baselines)
    batch_correction: list[Literal["pca", "harmony"]] = Field(default_factory=_batch_baselines)
    n_hvg: int = Field(2000, ge=10, description="HVGs (chosen on training cells) for baselines")
    n_pcs: int = Field(50, ge=2, description="PCA components for kNN and the PCA/Harmony refs")
    knn_k: int = Field(10, ge=1, description="neighbours of the kNN-on-PCA classifier")


class StatsSpec(_Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap: int = Field(2000, ge=100, description="paired bootstrap resamples")
    compare_to: list[str] = Field(
        default_factory=lambda: ["full", "logreg"],
        description="references of the paired comparisons, cell typing",
    )
    compare_to_batch: list[str] = Field(
        default_factory=lambda: ["full", "harmony"],
        description="references of the paired comparisons, batch correction",
    )

    def references(self, task_plugin: str) -> list[str]:
        """The references of a task's comparisons."""
        return self.compare_to_batch if task_plugin == "batch_correction" else self.compare_to

    rare_fraction: float = Field(
        0.05, gt=0, lt=1, description="a class is rare below this share of training cells"
    )
    min_seeds: int = Field(3, ge=1, description="warn when fewer seeds are run")


class ReportSpec(_Strict):
    umap: bool = Field(True, description="draw the UMAP grid of methods (first seed)")
    umap_max_cells: int = Field(1500, ge=20)


class BenchSpec(_Strict):
    bench: Literal[1] = Field(1, description="grid schema version")
    name: str
    description: str = ""
    seeds: int | list[int] = Field(3, description="a count (0..n-1) or a list of seeds")
    out: str | None = Field(None, description="results folder (default bench/<name>)")
    set: dict[str, Any] = Field(default_factory=dict)
    backbones: dict[str, BackboneSpec] = Field(min_length=1)
    methods: dict[str, MethodSpec] = Field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    rules: list[RuleSpec] = Field(default_factory=list)
    baselines: BaselineSpec = Field(default_factory=BaselineSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, bool):
            raise ValueError(f"expected a count or a list of seeds, got {v!r}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"at least one seed is needed (got {v})")
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"expected distinct non-negative seeds, got {v}")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass
class Cell:
    """One run of the grid: its coordinates, its recipe and the hash that keys its results."""

    task: str
    dataset: str
    backbone: str
    method: str
    seed: int
    recipe: dict[str, Any]
    hash: str

    @property
    def id(self) -> str:
        return f"{self.task}__{self.dataset}__{self.backbone}__{self.method}__s{self.seed}"

    @property
    def coords(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "method": self.method,
            "seed": self.seed,
        }


@dataclass
class Plan:
    """The expanded grid: cells to run, cells skipped (with the reason) and the datasets used."""

    spec: BenchSpec
    source: Path | None
    cells: list[Cell]
    skipped: list[dict[str, str]] = field(default_factory=list)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> data section
    absent: dict[str, str] = field(default_factory=dict)  # optional datasets not found
    tasks: dict[str, str] = field(default_factory=dict)  # grid task key -> task plugin name
    methods: dict[str, list[str]] = field(default_factory=dict)  # method -> adapter names


# ----------------------------------------------------------------------------- dotted keys


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping (creating mappings on the way); the value is copied."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Hash of everything that changes a cell's result (the output section excluded)."""
    key = {k: v for k, v in recipe.items() if k != "output"}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- loading


def find_grid(ref: str) -> Path:
    """A grid file, or a shipped grid by name (``paper_small``)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    shipped = shipped_grids()
    if ref in shipped:
        return shipped[ref]
    if path.suffix in (".yaml", ".yml") or "/" in ref:
        raise RecipeError(
            f"grid file '{ref}' does not exist (working directory: {Path.cwd()})",
            hint=f"shipped grids: {quoted(shipped)}",
        )
    raise RecipeError(
        f"grid '{ref}' is neither a file nor a shipped grid{did_you_mean(ref, shipped)}",
        hint=f"shipped grids: {quoted(shipped)}",
    )


def shipped_grids() -> dict[str, Path]:
    return {p.stem: p for p in sorted(GRIDS_DIR.glob("*.yaml"))}


def load_spec(ref: str | Path | dict[str, Any]) -> tuple[BenchSpec, Path | None, dict[str, Any]]:
    """Read and validate a grid (file, shipped name or mapping): ``(spec, file, raw mapping)``."""
    from sctune.core.recipe import pydantic_problems, read_yaml

    if isinstance(ref, dict):
        raw, source, where = copy.deepcopy(ref), None, "<dict>"
    else:
        source = find_grid(str(ref)).resolve()
        raw, where = read_yaml(source), str(ref)
    raw = dict(raw)
    if source is not None:
        raw.setdefault("name", source.stem)
    try:
        spec = BenchSpec.model_validate(raw)
    except ValidationError as exc:
        problems = pydantic_problems(exc, BenchSpec)
        # unknown top-level keys only: check the rest too, so every problem shows at once
        extra = {e["loc"][0] for e in exc.errors() if e["type"] == "extra_forbidden"}
        if len(extra) == len(exc.errors()) and all(len(e["loc"]) == 1 for e in exc.errors()):
            try:
                rest = BenchSpec.model_validate({k: v for k, v in raw.items() if k not in extra})
                problems += _cross_problems(rest)
            except ValidationError:
                pass
        raise _invalid(where, problems) from None
    problems = _cross_problems(spec)
    if problems:
        raise _invalid(where, problems)
    return spec, source, raw


def _invalid(where: str, problems: list[str]) -> RecipeError:
    n = len(problems)
    return RecipeError(
        f"grid '{where}' is invalid ({n} problem{'s' if n != 1 else ''})\n  "
        + "\n  ".join(problems),
        hint="'sctune bench --help' describes the grid file; 'sctune plugins' lists plugins",
    )


def _unknown(key: str, what: str, given: str, allowed: list[str]) -> str:
    return (
        f"{key}: unknown {what} '{given}'{did_you_mean(given, allowed)}\n"
        f"      defined {what}s: {quoted(allowed)}"
    )


def _cross_problems(spec: BenchSpec) -> list[str]:
    """References between sections (task -> dataset, rules, compare_to) and names."""
    problems = []
    if not _SAFE.match(spec.name):
        problems.append(f"name: '{spec.name}' must be letters, digits, '_', '.' or '-'")
    methods = method_names(spec)
    for section, names in (
        ("backbones", spec.backbones),
        ("methods", spec.methods),
        ("datasets", spec.datasets),
        ("tasks", spec.tasks),
    ):
        for name in names:
            if not _SAFE.match(name) or "__" in name:
                problems.append(
                    f"{section}.{name}: names must be letters, digits, '_' (not '__'), '.' or '-'"
                )
    for tname, task in spec.tasks.items():
        for i, d in enumerate(task.datasets):
            if d not in spec.datasets:
                problems.append(
                    _unknown(f"tasks.{tname}.datasets.{i}", "dataset", d, list(spec.datasets))
                )
        for i, m in enumerate(task.methods or []):
            if m not in methods:
                problems.append(_unknown(f"tasks.{tname}.methods.{i}", "method", m, methods))
        for i, b in enumerate(task.backbones or []):
            if b not in spec.backbones:
                problems.append(
                    _unknown(f"tasks.{tname}.backbones.{i}", "backbone", b, list(spec.backbones))
                )
    known = {
        "backbone": list(spec.backbones),
        "method": methods,
        "dataset": list(spec.datasets),
        "task": list(spec.tasks),
    }
    for i, rule in enumerate(spec.rules):
        for k, v in rule.when.items():
            for value in [v] if isinstance(v, str) else v:
                if value not in known[k]:
                    problems.append(_unknown(f"rules.{i}.when.{k}", k, value, known[k]))
    baselines: list[str] = [*spec.baselines.cell_type, *spec.baselines.batch_correction]
    plugins = {str(t.task.get("name", k)) for k, t in spec.tasks.items()}
    keys = ["compare_to"] if plugins - {"batch_correction"} else []
    keys += ["compare_to_batch"] if "batch_correction" in plugins else []
    for key in keys:  # only the references of the grid's own tasks
        for i, c in enumerate(getattr(spec.stats, key)):
            if c not in methods and c not in baselines:
                problems.append(
                    _unknown(f"stats.{key}.{i}", "method or baseline", c, methods + baselines)
                )
    for dname, dspec in spec.datasets.items():
        if "path" not in dspec.data:
            problems.append(f"datasets.{dname}.data.path: required key is missing")
    return problems


def method_names(spec: BenchSpec) -> list[str]:
    """The grid's methods: its own, then the per-backbone baselines it does not define."""
    return list(spec.methods) + [m for m in spec.baselines.per_backbone if m not in spec.methods]


def method_spec(spec: BenchSpec, name: str) -> MethodSpec:
    return spec.methods.get(name) or MethodSpec(adapter={"name": name})


# ----------------------------------------------------------------------------- expansion


def _base_recipe(ref: str, source: Path | None, registry: Any) -> dict[str, Any]:
    """A backbone's base recipe with its own relative paths made absolute."""
    from sctune.core.paths import resolve_paths
    from sctune.core.recipe import find_recipe, read_yaml

    candidates = [source.parent / ref] if source is not None else []
    path = next((c for c in candidates if c.is_file()), None)
    path = path or find_recipe(ref, registry.recipe_dirs())
    return resolve_paths(read_yaml(path), registry, path.parent)


def _missing_files(data: dict[str, Any]) -> list[str]:
    from sctune.core.paths import is_name

    value = data.get("path")
    paths = (
        value
        if isinstance(value, list)
        else list(value.values())
        if isinstance(value, dict)
        else [value]
    )
    return [
        str(p) for p in paths if isinstance(p, str) and not is_name(p) and not Path(p).exists()
    ]


def _expandvars(data: dict[str, Any]) -> dict[str, Any]:
    """``$VAR`` / ``${VAR}`` in ``data.path`` (one path, a list or a mapping) from the environment;
    an unset variable stays as written (so the file is reported absent)."""
    out = copy.deepcopy(data)
    value = out.get("path")
    if isinstance(value, str):
        out["path"] = os.path.expandvars(value)
    elif isinstance(value, list):
        out["path"] = [os.path.expandvars(v) if isinstance(v, str) else v for v in value]
    elif isinstance(value, dict):
        out["path"] = {
            k: os.path.expandvars(v) if isinstance(v, str) else v for k, v in value.items()
        }
    return out


def _matches(rule: RuleSpec, coords: dict[str, str]) -> bool:
    return all(
        coords[k] == v if isinstance(v, str) else coords[k] in v for k, v in rule.when.items()
    )


def build_recipe(
    spec: BenchSpec,
    base: dict[str, Any],
    coords: dict[str, str],
    data: dict[str, Any],
) -> dict[str, Any]:
    """The recipe of one cell (before its seed, split file and output are set)."""
    recipe = copy.deepcopy(base)
    for k, v in spec.set.items():
        set_dotted(recipe, k, v)
    recipe["data"] = copy.deepcopy(data)
    tspec = spec.tasks[coords["task"]]
    section = {"name": coords["task"], **tspec.task}
    old: dict[str, Any] = recipe["task"] if isinstance(recipe.get("task"), dict) else {}
    recipe["task"] = {**old, **section} if old.get("name") == section["name"] else section
    for sets in (
        tspec.set,
        spec.datasets[coords["dataset"]].set,
        spec.backbones[coords["backbone"]].set,
    ):
        for k, v in sets.items():
            set_dotted(recipe, k, v)
    mspec = method_spec(spec, coords["method"])
    recipe["adapter"] = copy.deepcopy(mspec.adapter)
    for k, v in mspec.set.items():
        set_dotted(recipe, k, v)
    for rule in spec.rules:
        if _matches(rule, coords):
            for k, v in rule.set.items():
                set_dotted(recipe, k, v)
    recipe["name"] = (
        f"{spec.name}-{coords['task']}-{coords['dataset']}-{coords['backbone']}-{coords['method']}"
    )
    return recipe


def expand(spec: BenchSpec, source: Path | None, registry: Any) -> Plan:
    """Expand the grid into validated cells; incompatible pairs are skipped with the reason.

    Raises :class:`RecipeError` listing, per cell, every problem of its recipe (other than an
    adapter the backbone cannot host, or a zero-shot method for a task without zero-shot).
    """
    from sctune.core.errors import CompatibilityError, SctuneError
    from sctune.core.paths import resolve_paths
    from sctune.core.recipe import validate_recipe

    where = str(source) if source is not None else "<dict>"
    here = source.parent if source is not None else Path.cwd()
    plan = Plan(spec=spec, source=source, cells=[])
    problems: list[str] = []
    bases: dict[str, dict[str, Any]] = {}
    for bname, b in spec.backbones.items():
        try:
            bases[bname] = _base_recipe(b.recipe, source, registry)
        except SctuneError as exc:
            problems.append(f"backbones.{bname}.recipe: {exc.message}")
    for dname, d in spec.datasets.items():
        data = resolve_paths({"data": _expandvars(d.data)}, registry, here)["data"]
        missing = _missing_files(data)
        if missing and d.optional:
            unset = [v for v in re.findall(r"\$\{?(\w+)", missing[0]) if v not in os.environ]
            plan.absent[dname] = f"file '{missing[0]}' is absent" + (
                f" (set {unset[0]} to the folder that holds it)" if unset else ""
            )
            continue
        if missing:
            problems.append(
                f"datasets.{dname}.data.path: file '{missing[0]}' does not exist (set "
                "'optional: true' to skip the dataset when it is absent)"
            )
            continue
        plan.datasets[dname] = data
    if problems:
        raise _invalid(where, problems)
    tasks = registry.names("task")
    for tname, t in spec.tasks.items():
        plugin = str(t.task.get("name", tname))
        if plugin not in tasks:
            problems.append(
                _unknown(f"tasks.{tname}", "task", plugin, tasks).replace("defined", "installed")
            )
        plan.tasks[tname] = plugin
    adapters = registry.names("adapter")
    for mname in method_names(spec):
        section = method_spec(spec, mname).adapter
        names = [s.get("name") for s in (section if isinstance(section, list) else [section])]
        plan.methods[mname] = [str(n) for n in names]
        for n in names:
            if n not in adapters:
                key = (
                    f"methods.{mname}.adapter.name"
                    if mname in spec.methods
                    else f"baselines.per_backbone ('{mname}')"
                )
                problems.append(
                    _unknown(key, "adapter", str(n), adapters).replace("defined", "installed")
                )
    if problems:
        raise _invalid(where, problems)
    seeds = spec.seed_list
    for tname, t in spec.tasks.items():
        task_cls = registry.get("task", plan.tasks[tname]).cls
        for dname in t.datasets:
            if dname not in plan.datasets:
                continue
            for bname in t.backbones or list(spec.backbones):
                for mname in t.methods or method_names(spec):
                    coords = {"task": tname, "dataset": dname, "backbone": bname, "method": mname}
                    label = ", ".join(f"{k}={v}" for k, v in coords.items())
                    recipe = build_recipe(spec, bases[bname], coords, plan.datasets[dname])
                    recipe = resolve_paths(recipe, registry, here)
                    reason = _skip_reason(registry, recipe, task_cls, plan.methods[mname])
                    if reason:
                        plan.skipped.append({**coords, "reason": reason})
                        continue
                    try:
                        validate_recipe(
                            {**recipe, "seed": seeds[0]}, registry, source=f"cell {label}"
                        )
                    except CompatibilityError as exc:
                        plan.skipped.append({**coords, "reason": exc.message.splitlines()[0]})
                        continue
                    except SctuneError as exc:
                        problems.append(
                            f"cell ({label}):\n      " + exc.message.replace("\n", "\n      ")
                        )
                        continue
                    for seed in seeds:
                        cell_recipe = {**copy.deepcopy(recipe), "seed": seed}
                        plan.cells.append(
                            Cell(
                                tname,
                                dname,
                                bname,
                                mname,
                                seed,
                                cell_recipe,
                                recipe_hash(cell_recipe),
                            )
                        )
    if problems:
        raise _invalid(where, problems)
    return plan


def _skip_reason(
    registry: Any, recipe: dict[str, Any], task_cls: Any, adapters: list[str]
) -> str | None:
    from sctune.core.errors import CompatibilityError

    backbone = str(recipe.get("backbone", {}).get("name"))
    for a in adapters:
        try:
            registry.check_compatible(backbone, a)
        except CompatibilityError as exc:
            return exc.message.splitlines()[0]
        if not registry.get("adapter", a).cls.trains and not task_cls.zero_shot:
            return f"task '{task_cls.name}' has no zero-shot transfer, so '{a}' (trains nothing) cannot run it"
    return None
