"""YAML recipes: envelope validation, per-plugin option validation, overrides, shipped names.

Validation has two passes (style.md section 6). Pass 1 checks the envelope; ``backbone``,
``adapter`` and ``task`` only need ``name`` there. Pass 2 validates each plugin's remaining keys
with that plugin's ``config_cls``. All problems are collected and raised together as one
:class:`RecipeError` whose lines read ``dotted.key: message``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sctune.core.errors import CompatibilityError, RecipeError, SctuneError, did_you_mean, quoted

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    method: Literal["stratified", "column", "group"] = Field(
        "stratified",
        description="stratified random | an existing obs column | a donor/batch group split",
    )
    column: str | None = Field(
        None, description="method=column: obs column with train/valid/test values"
    )
    group_column: str | None = Field(
        None, description="method=group: obs column with donor/patient/batch"
    )
    valid: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of cells for validation")
    test: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of cells for test")
    file: str | None = Field(
        None, description="reuse a saved split (cell ids) from an earlier run"
    )


class DataConfig(_Strict):
    path: str = Field(
        description="an .h5ad path, or a built-in name such as 'scanpy:pbmc68k_reduced'"
    )
    label_column: str = Field("cell_type", description="adata.obs column holding the cell types")
    gene_column: str | None = Field(
        None, description="adata.var column with gene ids; null = var_names"
    )
    source: str = Field(
        "auto", description="matrix: auto | X | raw | layer:<name> (auto prefers counts)"
    )
    kind: Literal["auto", "counts", "lognorm"] = Field(
        "auto", description="override the detection of raw counts vs log-normalised values"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)  # type: ignore[arg-type]
    min_class_cells: int = Field(
        10, ge=1, description="warn about classes smaller than this in training"
    )
    max_cells: int | None = Field(None, ge=1, description="random subsample for quick runs")


class OptimizerConfig(_Strict):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1.0e-4, gt=0)
    eps: float = Field(1.0e-8, gt=0, description="scPEFT uses 1e-4 under fp16 AMP")
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(_Strict):
    name: Literal["step", "cosine", "none"] = "step"
    gamma: float = Field(0.9, gt=0, le=1, description="step: multiply lr by gamma every epoch")
    warmup_steps: int = Field(0, ge=0)


class EarlyStoppingConfig(_Strict):
    monitor: Literal[
        "valid/loss", "valid/accuracy", "valid/balanced_accuracy", "valid/macro_f1"
    ] = "valid/loss"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainerConfig(_Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)  # type: ignore[arg-type]
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)  # type: ignore[arg-type]
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)  # type: ignore[arg-type]
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; null = torch default"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class OutputConfig(_Strict):
    dir: str | None = Field(None, description="run directory; null = runs/<name>")
    overwrite: bool = Field(False, description="replace an existing run directory")
    plots: bool = True
    predictions: bool = True


class PluginSection(BaseModel):
    """Pass 1 of a plugin section: a name plus keys checked in pass 2."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


class Envelope(_Strict):
    sctune: int = Field(description="recipe schema version")
    name: str
    seed: int = 0
    data: DataConfig
    backbone: PluginSection
    adapter: PluginSection | list[PluginSection]
    task: PluginSection
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)  # type: ignore[arg-type]
    output: OutputConfig = Field(default_factory=OutputConfig)  # type: ignore[arg-type]

    @field_validator("sctune")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported recipe schema version {v}; this sctune reads version {SCHEMA_VERSION}"
            )
        return v


@dataclass(frozen=True)
class PluginChoice:
    """A validated plugin section: its name and its options model instance."""

    name: str
    config: Any


@dataclass(frozen=True)
class Recipe:
    """A fully validated recipe."""

    envelope: Envelope
    backbone: PluginChoice
    adapters: tuple[PluginChoice, ...]
    task: PluginChoice
    source: str
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.envelope.name

    @property
    def data(self) -> DataConfig:
        return self.envelope.data

    @property
    def trainer(self) -> TrainerConfig:
        return self.envelope.trainer

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in (written to ``recipe.resolved.yaml``)."""
        env = self.envelope.model_dump(mode="json", exclude={"backbone", "adapter", "task"})

        def section(choice: PluginChoice) -> dict[str, Any]:
            return {"name": choice.name, **choice.config.model_dump(mode="json")}

        adapters = [section(a) for a in self.adapters]
        return {
            "sctune": env.pop("sctune"),
            "name": env.pop("name"),
            "seed": env.pop("seed"),
            "data": env.pop("data"),
            "backbone": section(self.backbone),
            "adapter": adapters[0] if len(adapters) == 1 else adapters,
            "task": section(self.task),
            **env,
        }


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _model_fields(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for did-you-mean on unknown keys."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        nested = [
            a
            for a in getattr(ann, "__args__", (ann,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            return []
        current = nested[0]
    return list(getattr(current, "model_fields", {}))


# Names users bring from other tools, mapped to sctune's key (searched among nested keys too).
SYNONYMS = {
    "learning_rate": "lr",
    "max_epochs": "epochs",
    "n_epochs": "epochs",
    "num_epochs": "epochs",
    "clip_grad_norm": "grad_clip",
    "gradient_clip_val": "grad_clip",
}


def _suggest(given: str, model: type[BaseModel], loc: Sequence[Any], allowed: list[str]) -> str:
    """Did-you-mean among sibling keys, else among keys one level down (``optimizer.lr``)."""
    target = SYNONYMS.get(given, given)
    hint = did_you_mean(target, allowed) if target != given and target in allowed else ""
    hint = hint or did_you_mean(given, allowed)
    if hint:
        return hint
    nested = {f"{f}.{sub}": sub for f in allowed for sub in _model_fields(model, [*loc, f])}
    for dotted, sub in nested.items():
        if sub == target:
            return f"; did you mean '{dotted}'?"
    match = did_you_mean(target, nested.values())
    if match:
        sub = match.split("'")[1]
        return f"; did you mean '{next(d for d, s in nested.items() if s == sub)}'?"
    return ""


def pydantic_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Turn a ValidationError into ``dotted.key: message`` lines with did-you-mean hints."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(filter(None, [prefix, _loc(loc)]))
        if err["type"] == "extra_forbidden":
            allowed = _model_fields(model, loc[:-1])
            lines.append(
                f"{key}: unknown key{_suggest(str(loc[-1]), model, loc[:-1], allowed)}"
                + (f"\n      allowed keys: {quoted(allowed)}" if allowed else "")
            )
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            lines.append(f"{key}: {err['msg'][0].lower() + err['msg'][1:]}{shown}")
    return lines


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    out = copy.deepcopy(data)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}': expected dotted.key=value, e.g. trainer.epochs=5")
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            problems.append(
                f"override '{item}': the value is not valid YAML ({str(exc).splitlines()[0]}); "
                "quote the whole override in the shell, e.g. 'adapter={name: lora}'"
            )
            continue
        node: Any = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                problems.append(f"override '{item}': '{part}' is not a mapping in the recipe")
                break
        else:
            last = parts[-1]
            if isinstance(node, list) and last.isdigit():
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                problems.append(f"override '{item}': cannot set '{last}'")
    if problems:
        raise RecipeError(
            f"invalid overrides ({len(problems)} problems)\n  " + "\n  ".join(problems)
        )
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe '{path}' must be a YAML mapping, got {type(data).__name__}")
    return data


def find_recipe(ref: str, recipe_dirs: Sequence[Path]) -> Path:
    """Resolve a path or a shipped recipe's short name (file stem, or ``<folder>/<stem>``)."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped: dict[str, Path] = {}
    for d in recipe_dirs:
        for f in sorted(Path(d).rglob("*.yaml")):
            rel = f.relative_to(d).with_suffix("").as_posix()
            shipped.setdefault(rel, f)
            shipped.setdefault(f.stem, f)
    key = ref[:-5] if ref.endswith(".yaml") else ref
    if key in shipped:
        return shipped[key]
    raise RecipeError(
        f"recipe '{ref}' is neither a file nor a shipped recipe{did_you_mean(key, shipped)}\n"
        f"    shipped recipes: {quoted(k for k in shipped if '/' in k or k == Path(k).stem)}",
        hint="'sctune recipes' lists shipped recipes; 'sctune recipes init NAME' copies one out",
    )


def validate_recipe(data: Mapping[str, Any], registry: Any, *, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping against the envelope and the registered plugins' options."""
    problems: list[str] = []
    compat: list[str] = []  # the subset of problems that are adapter/backbone mismatches
    try:
        env = Envelope.model_validate(dict(data))
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, Envelope))
        env = None
    sections: dict[str, list[tuple[str, Mapping[str, Any]]]] = {
        "backbone": [],
        "adapter": [],
        "task": [],
    }
    for kind in sections:
        raw = data.get(kind)
        items = raw if isinstance(raw, list) else [raw]
        for i, item in enumerate(items):
            where = f"{kind}.{i}" if isinstance(raw, list) else kind
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                sections[kind].append((where, item))
    chosen: dict[str, list[PluginChoice]] = {k: [] for k in sections}
    for kind, items in sections.items():
        for where, item in items:
            name = item["name"]
            if name not in registry.entries[kind]:
                problems.append(
                    f"{where}.name: unknown {kind} '{name}'{did_you_mean(name, registry.entries[kind])}\n"
                    f"      installed {kind}s: {quoted(registry.entries[kind])}"
                )
                continue
            cls = registry.entries[kind][name].cls
            options = {k: v for k, v in item.items() if k != "name"}
            try:
                chosen[kind].append(PluginChoice(name, cls.config_cls.model_validate(options)))
            except ValidationError as exc:
                problems.extend(pydantic_problems(exc, cls.config_cls, prefix=where))
    backbone = chosen["backbone"][0] if chosen["backbone"] else None
    if backbone is not None:
        bcls = registry.entries["backbone"][backbone.name].cls
        for key, message in bcls().check(backbone.config):
            problems.append(f"{key}: {message}")
        for adapter in chosen["adapter"]:
            try:
                registry.check_compatible(backbone.name, adapter.name, adapter.config)
            except SctuneError as exc:
                problems.append("adapter: " + exc.message)
                compat.append(problems[-1])
    names = [a.name for a in chosen["adapter"]]
    if len(names) > 1 and any(
        not registry.entries["adapter"][n].cls.trains or n in ("full", "head") for n in names
    ):
        problems.append(
            f"adapter: baselines cannot be combined with other adapters (got {', '.join(names)})"
        )
    if len(set(names)) != len(names):
        problems.append(f"adapter: the same adapter is listed twice ({', '.join(names)})")
    if problems or env is None or backbone is None or not chosen["task"]:
        # only mismatches: a CompatibilityError (still one message listing every problem)
        error_cls = CompatibilityError if problems and problems == compat else RecipeError
        raise error_cls(
            f"recipe '{source}' is invalid ({len(problems)} problem{'s' * (len(problems) != 1)})\n  "
            + "\n  ".join(problems),
            hint="'sctune plugins' lists installed plugins and their options",
        )
    return Recipe(env, backbone, tuple(chosen["adapter"]), chosen["task"][0], source, dict(data))


def load_recipe(ref: str | Path, registry: Any, overrides: Sequence[str] = ()) -> Recipe:
    """Read (path or shipped name), apply overrides, validate."""
    path = find_recipe(str(ref), registry.recipe_dirs())
    data = apply_overrides(read_yaml(path), overrides)
    return validate_recipe(data, registry, source=str(path))
