"""YAML recipes: envelope validation, per-plugin option validation, overrides, shipped names.

Validation has two passes (style.md section 6). Pass 1 checks the envelope; ``backbone``,
``adapter`` and ``task`` only need ``name`` there. Pass 2 validates each plugin's remaining keys
with that plugin's ``config_cls``. All problems are collected and raised together as one
:class:`RecipeError` whose lines read ``dotted.key: message``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.file is not None:  # a saved split ignores the other keys
            return self
        if self.valid + self.test >= 1.0:
            raise ValueError(
                f"valid ({self.valid}) + test ({self.test}) = {self.valid + self.test:.3g} leaves "
                "no training cells; the two fractions must sum to less than 1 (e.g. valid: 0.1, "
                "test: 0.2)"
            )
        needs = {"column": "column", "group": "group_column"}
        for method, key in needs.items():
            given = getattr(self, key)
            if self.method == method and not given:
                raise ValueError(
                    f"method '{method}' needs '{key}': the adata.obs column that holds "
                    + ("train/valid/test" if method == "column" else "donor/patient/batch ids")
                    + f"; set data.split.{key}"
                )
            if self.method != method and given:
                raise ValueError(
                    f"'{key}' is only read with method '{method}', but method is "
                    f"'{self.method}'; set data.split.method: {method}, or remove "
                    f"data.split.{key}"
                )
        return self


def data_files(path: str | list[str] | dict[str, str]) -> list[tuple[str, str]] | None:
    """``[(batch name, path), ...]`` for several files (``data.path`` as a list or mapping), or
    ``None`` for one path. A list's batch names are the file stems (``xin`` for
    ``data/xin.h5ad``, ``pbmc68k_reduced`` for ``scanpy:pbmc68k_reduced``)."""
    if isinstance(path, str):
        return None
    if isinstance(path, Mapping):
        return [(str(k), str(v)) for k, v in path.items()]
    return [(_stem(str(p)), str(p)) for p in path]


def _stem(path: str) -> str:
    from sctune.core.paths import is_name

    name = path.split(":", 1)[1] if is_name(path) else path
    return Path(name).stem or name


_PATH_SHAPES = (
    "an .h5ad path (or a built-in name such as 'scanpy:pbmc68k_reduced'), a list of .h5ad "
    "paths, or a mapping {batch name: path}"
)


def _data_path_problem(value: Any) -> str | None:
    """Why ``value`` cannot be ``data.path``, or ``None``; keeps the messages in one place."""
    if isinstance(value, str):
        return (
            None
            if value.strip()
            else "string should have at least 1 character: give " + _PATH_SHAPES
        )
    if isinstance(value, Mapping):
        if not value:
            return "the mapping of files is empty; give at least one {batch name: path} pair"
        for k, v in value.items():
            if not isinstance(k, (str, int)) or not str(k).strip():
                return f"batch name {k!r} is not a name; use short names such as 'donor1'"
            if not isinstance(v, str) or not v.strip():
                return f"batch '{k}': expected an .h5ad path, got {v!r}"
        paths = [str(v) for v in value.values()]
    elif isinstance(value, (list, tuple)):
        if not value:
            return "the list of files is empty; give at least one .h5ad path"
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                return f"item {i}: expected an .h5ad path, got {v!r}"
        paths = [str(v) for v in value]
        stems: dict[str, str] = {}
        for p in paths:
            other = stems.setdefault(_stem(p), p)
            if other != p:
                return (
                    f"'{other}' and '{p}' would both be batch '{_stem(p)}' (batch names are the "
                    "file stems); name the batches with a mapping instead, e.g. "
                    "{a: " + other + ", b: " + p + "}"
                )
    else:
        got = "null" if value is None else f"{type(value).__name__} {value!r}"
        return f"expected {_PATH_SHAPES}; got {got}"
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        return f"file '{twice[0]}' is listed twice; each file is one batch"
    return None


class DataConfig(_Strict):
    path: str | list[str] | dict[str, str] = Field(
        description="an .h5ad path or a built-in name ('scanpy:pbmc68k_reduced'); several files: "
        "a list of paths (batch = file stem) or a mapping {batch name: path}",
    )
    batch_key: str = Field(
        "batch",
        min_length=1,
        description="several files: the adata.obs column that receives each file's batch name",
    )
    label_column: str | None = Field(
        "cell_type",
        description="adata.obs column holding the cell types; null = no labels (all 'unknown')",
    )
    gene_column: str | None = Field(
        None, description="adata.var column with gene ids; null = var_names"
    )
    source: str = Field(
        "auto", description="matrix: auto | X | raw | layer:<name> (auto prefers counts)"
    )
    kind: Literal["auto", "counts", "lognorm"] = Field(
        "auto", description="override the detection of raw counts vs log-normalised values"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_cells: int | None = Field(None, ge=1, description="random subsample for quick runs")
    hvg: int | None = Field(
        None,
        ge=1,
        description="keep only this many highly variable genes (variance of log-normalised "
        "expression over the TRAINING cells) before tokenizing, so every token a cell keeps is "
        "an informative gene; null = every gene. The kept genes are the run's genes.txt, and "
        "'sctune predict' keeps the same ones",
    )
    stream: bool = Field(
        False,
        description="read the .h5ad file in chunks of chunk_size cells instead of loading X whole "
        "(files larger than memory): tokens go to disk (cache_dir), predictions.h5ad is written "
        "chunk by chunk; the task gets no expression matrix (GEPC and PCA/Harmony references "
        "are off)",
    )
    chunk_size: int = Field(
        20000, ge=1, description="data.stream: cells read, checked and tokenized at a time"
    )
    cache_tokens: bool = Field(
        True,
        description="keep the tokenized cells on disk, keyed by data, vocabulary and tokenizer "
        "settings, so reruns and benchmark grids skip tokenization",
    )
    cache_dir: str | None = Field(
        None,
        min_length=1,
        description="token cache folder; null = $SCTUNE_CACHE_DIR or ~/.cache/sctune",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_shape(cls, v: Any) -> Any:
        problem = _data_path_problem(v)
        if problem:
            raise ValueError(problem)
        if isinstance(v, Mapping):
            return {str(k): val for k, val in v.items()}
        return list(v) if isinstance(v, tuple) else v

    @property
    def files(self) -> list[tuple[str, str]] | None:
        """``[(batch name, path), ...]`` when ``path`` lists several files, else ``None``."""
        return data_files(self.path)


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
    monitor: str = Field(
        "valid/loss",
        description="valid/loss, train/loss, or a validation metric the task declares "
        "(cell_type: valid/accuracy, valid/balanced_accuracy, valid/macro_f1)",
    )
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainerConfig(_Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; null = torch default"
    )
    length_bucketing: bool = Field(
        True,
        description="batch cells of similar token count (sorted within shuffled pools of "
        "bucket_pool batches, batches in random order): less padding, still stochastic; "
        "false = plain shuffling",
    )
    bucket_pool: int = Field(
        50, ge=1, description="length_bucketing: batches per sorted pool (more: less padding)"
    )
    compile: bool = Field(
        False, description="torch.compile the model (GPU; the first steps compile, slowly)"
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute each transformer layer in the backward pass: less memory for "
        "long sequences (Geneformer 2,048/4,096 tokens), about a third more compute",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class OutputConfig(_Strict):
    dir: str | None = Field(None, min_length=1, description="run directory; null = runs/<name>")
    overwrite: bool = Field(False, description="replace an existing run directory")
    plots: bool = True
    predictions: bool = True


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a run name (one folder inside the output root), or ``None``."""
    shown = repr(name)
    if not name.strip():
        return "the run name is empty; give a short folder name such as 'pbmc-lora'"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return (
            f"the run name {shown} holds control characters (NUL, newline, ...); use letters, "
            "digits, '-', '_' or '.'"
        )
    if "/" in name or "\\" in name:
        return (
            f"the run name {shown} holds a path separator; it must be one folder name so the run "
            "stays inside the output root (set output.dir to choose where runs go)"
        )
    if name in (".", ".."):
        return f"the run name {shown} is not a folder name; use e.g. 'pbmc-lora'"
    if name != name.strip():
        return f"the run name {shown} starts or ends with whitespace; remove it"
    return None


class PluginSection(BaseModel):
    """Pass 1 of a plugin section: a name plus keys checked in pass 2."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


class Envelope(_Strict):
    sctune: int = Field(description="recipe schema version")
    name: str = Field(
        description="run name: one folder name, the default run directory runs/<name>"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds numpy, torch and the split")
    data: DataConfig
    backbone: PluginSection
    adapter: PluginSection | list[PluginSection]
    task: PluginSection
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("seed", mode="before")
    @classmethod
    def _no_bool_seed(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"expected an integer from 0 to {2**32 - 1}, got a boolean")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = run_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

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
        if err["type"] == "extra_forbidden" and tuple(map(str, loc[-2:])) in MOVED_KEYS:
            lines.append(
                f"{key}: this key moved to '{MOVED_KEYS[tuple(map(str, loc[-2:]))]}' (the task "
                "owns the checks on its labels)"
            )
        elif err["type"] == "extra_forbidden":
            allowed = _model_fields(model, loc[:-1])
            lines.append(
                f"{key}: unknown key{_suggest(str(loc[-1]), model, loc[:-1], allowed)}"
                + (f"\n      allowed keys: {quoted(allowed)}" if allowed else "")
            )
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif err["type"] in ("model_type", "dict_type", "model_attributes_type"):
            given = err.get("input")
            got = "null" if given is None else f"{type(given).__name__} {given!r}"
            lines.append(f"{key}: expected a mapping of keys (YAML 'key: value' lines), got {got}")
        elif err["type"] == "value_error":  # our validators: the message shows the value
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{key or 'recipe'}: {msg}")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            lines.append(f"{key}: {err['msg'][0].lower() + err['msg'][1:]}{shown}")
    return lines


_PLUGIN_SECTIONS = ("backbone", "adapter", "task")


def _plugin_section(parts: Sequence[str]) -> tuple[str, ...] | None:
    """The plugin section whose ``name`` the dotted key ``parts`` sets (``backbone``, ``adapter``,
    ``task`` or ``adapter.N`` in a list of adapters), else ``None``."""
    if len(parts) < 2 or parts[-1] != "name":
        return None
    section = tuple(parts[:-1])
    if len(section) == 1 and section[0] in _PLUGIN_SECTIONS:
        return section
    if len(section) == 2 and section[0] == "adapter" and section[1].isdigit():
        return section
    return None


def _drop_other_plugin_keys(
    node: dict[str, Any], section: tuple[str, ...], explicit: set[tuple[str, ...]]
) -> None:
    """Remove the keys of a plugin section that belong to the plugin being replaced.

    Keys this command's overrides set themselves (``explicit``, dotted paths) are kept, so
    ``adapter.rank=4 adapter.name=lora`` keeps ``rank`` whatever the order.
    """
    for key in [k for k in node if k != "name"]:
        path = (*section, str(key))
        if not any(p[: len(path)] == path or path[: len(p)] == p for p in explicit):
            del node[key]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``data``.

    Setting a plugin's ``name`` (``backbone.name``, ``adapter.name``, ``adapter.N.name``,
    ``task.name``) to a different plugin drops the old plugin's options from that section, since
    they belong to the plugin being replaced (``sctune run quickstart adapter.name=lora``). Options
    given by the command's own overrides stay, before or after the name.
    """
    out = copy.deepcopy(data)
    problems = []
    explicit: set[tuple[str, ...]] = set()
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}': expected dotted.key=value, e.g. trainer.epochs=5")
            continue
        key, text = item.split("=", 1)
        try:
            value = parse_yaml(text) if text != "" else None
        except DuplicateKeys as exc:
            problems.append(f"override '{item}': the value repeats a key ({exc})")
            continue
        except ValueError as exc:
            problems.append(
                f"override '{item}': the value is {exc}; "
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
                section = _plugin_section(parts)
                if section is not None and node.get("name", value) != value:
                    _drop_other_plugin_keys(node, section, explicit)
                node[last] = value
            else:
                problems.append(f"override '{item}': cannot set '{last}'")
                continue
            explicit.add(tuple(parts))
    if problems:
        n = len(problems)
        raise RecipeError(
            f"invalid overrides ({n} problem{'s' * (n != 1)})\n  " + "\n  ".join(problems),
            hint="overrides are dotted.key=value pairs after the recipe, e.g. trainer.epochs=5",
        )
    return out


def _duplicate_keys(node: Any, where: str = "", seen_nodes: set[int] | None = None) -> list[str]:
    """``dotted.key: ...`` lines for keys repeated in one YAML mapping (PyYAML keeps the last)."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already checked
        return []
    seen_nodes.add(id(node))
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            dotted = f"{where}.{key}" if where else key
            line = key_node.start_mark.line + 1
            if key in first:
                problems.append(
                    f"{dotted}: the key appears twice in one mapping (lines {first[key]} and "
                    f"{line}); YAML would silently keep only the last value, so remove one"
                )
            else:
                first[key] = line
            problems += _duplicate_keys(value_node, dotted, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{where}.{i}" if where else str(i), seen_nodes)
    return problems


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    opened = f" ({context} started on line {start.line + 1})" if context and start else ""
    return f"{where}{problem}{opened}"


class DuplicateKeys(ValueError):
    """A YAML mapping repeats a key; ``lines`` holds one ``dotted.key: ...`` line per repeat."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`DuplicateKeys`); invalid YAML
    raises ``ValueError('not valid YAML (line L, column C: problem)')``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise DuplicateKeys(duplicates)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML ({_yaml_problem(exc)})") from exc


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file: UTF-8 text holding one YAML mapping without duplicate keys."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RecipeError(
            f"recipe '{path}' cannot be read: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from exc
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(
            f"recipe '{path}' is UTF-16 text; sctune reads UTF-8",
            hint="save the recipe as UTF-8 (e.g. 'iconv -f utf-16 -t utf-8')",
        )
    if b"\x00" in raw:
        raise RecipeError(
            f"recipe '{path}' is a binary file (it contains NUL bytes), not a YAML text file",
            hint="give the .yaml recipe; 'sctune recipes init NAME' writes an example",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"recipe '{path}' is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} "
            "cannot be decoded",
            hint="save the recipe as UTF-8 (e.g. 'iconv -f latin1 -t utf-8 old.yaml > new.yaml')",
        ) from exc
    try:
        data = parse_yaml(text)
    except DuplicateKeys as exc:
        n = len(exc.lines)
        raise RecipeError(
            f"recipe '{path}' repeats keys ({n} problem{'s' * (n != 1)})\n  "
            + "\n  ".join(exc.lines)
        ) from None
    except ValueError as exc:
        raise RecipeError(
            f"recipe '{path}' is {exc}",
            hint="indent with spaces, not tabs; quote values that contain ': ' or ' #'",
        ) from None
    if data is None:
        raise RecipeError(
            f"recipe '{path}' is empty; a recipe is a YAML mapping with the keys sctune, name, "
            "data, backbone, adapter and task",
            hint="'sctune recipes init quickstart' writes a complete example",
        )
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe '{path}' must be a YAML mapping (key: value lines) at the top level, got a "
            f"{type(data).__name__}",
            hint="'sctune recipes init quickstart' writes a complete example",
        )
    return data


def _shipped(recipe_dirs: Sequence[Path]) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Shipped recipes by the names 'sctune recipes' shows, and file stems -> those names."""
    named: dict[str, Path] = {}
    for d in recipe_dirs:
        for f in sorted(Path(d).rglob("*.yaml")):
            named.setdefault(f.relative_to(d).with_suffix("").as_posix(), f)
    stems: dict[str, list[str]] = {}
    for name in named:
        stems.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    return named, stems


def find_recipe(ref: str, recipe_dirs: Sequence[Path]) -> Path:
    """Resolve a path or a shipped recipe's name (``<folder>/<stem>`` as 'sctune recipes' lists
    it, or a file stem that only one shipped recipe has)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(
            f"recipe '{ref}' is a directory; give a recipe .yaml file inside it",
            hint="'sctune recipes' lists shipped recipes",
        )
    named, stems = _shipped(recipe_dirs)
    key = ref[:-5] if ref.endswith(".yaml") else ref
    if key in named:
        return named[key]
    candidates = stems.get(key, [])
    if len(candidates) == 1:
        return named[candidates[0]]
    hint = "'sctune recipes' lists shipped recipes; 'sctune recipes init NAME' copies one out"
    if candidates:
        raise RecipeError(
            f"recipe '{ref}' is ambiguous: {len(candidates)} shipped recipes have that name\n"
            f"    give one of: {quoted(candidates)}",
            hint=hint,
        )
    looks_like_file = ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref
    what = (
        f"recipe file '{ref}' does not exist (working directory: {Path.cwd()})"
        if looks_like_file
        else f"recipe '{ref}' is neither a file nor a shipped recipe"
    )
    raise RecipeError(
        f"{what}{did_you_mean(key, named)}\n    shipped recipes: {quoted(named)}", hint=hint
    )


_EXAMPLE_NAMES = {"backbone": "scgpt", "adapter": "lora", "task": "cell_type"}


def _section_shape(kind: str, raw: Any, registry: Any) -> list[str]:
    """Problems with the shape of a plugin section (a mapping with a string ``name``)."""
    installed = f"\n      installed {kind}s: {quoted(registry.entries[kind])}"
    example = f"'{kind}: {{name: {_EXAMPLE_NAMES[kind]}}}'"
    if kind == "adapter" and isinstance(raw, list):
        if not raw:
            return [
                f"adapter: the list is empty; give one adapter, e.g. {example}, or a list of "
                f"them{installed}"
            ]
        items = [(f"adapter.{i}", item) for i, item in enumerate(raw)]
    else:
        items = [(kind, raw)]
    out = []
    for where, item in items:
        if not isinstance(item, Mapping):
            got = "null" if item is None else f"{type(item).__name__} {item!r}"
            tip = (
                f"; did you mean '{kind}: {{name: {item}}}'?"
                if isinstance(item, str) and item in registry.entries[kind]
                else ""
            )
            out.append(
                f"{where}: expected a mapping with a 'name' key, e.g. {example}, got {got}{tip}"
                + installed
            )
        elif "name" not in item:
            out.append(f"{where}.name: required key is missing{installed}")
        elif not isinstance(item["name"], str):
            out.append(
                f"{where}.name: expected the {kind}'s name as text, got "
                f"{type(item['name']).__name__} {item['name']!r}{installed}"
            )
    return out


def output_dir_problem(path: str | Path, key: str = "output.dir") -> str | None:
    """Why a run directory cannot be created at ``path``, or ``None``: the path or one of its
    parents is an existing file, a parent is not writable, or the path holds a NUL byte."""
    text = str(path)
    if "\x00" in text:
        return f"{key}: {text!r} holds a NUL byte; give a plain folder path"
    out = Path(text).expanduser()
    out = out if out.is_absolute() else Path.cwd() / out
    if out.exists() and not out.is_dir():
        return (
            f"{key}: '{text}' is an existing file, not a directory; choose another "
            f"{key} (a run directory is a folder)"
        )
    for parent in out.parents:
        if not parent.exists() and not parent.is_symlink():
            continue
        if not parent.is_dir():
            return (
                f"{key}: '{text}' cannot be created because '{parent}' is a file, not a "
                f"directory; choose another {key}"
            )
        if not out.exists() and not os.access(parent, os.W_OK | os.X_OK):
            return f"{key}: cannot create '{text}': no write permission in '{parent}'"
        break
    return None


def check_output_dir(path: str | Path, key: str = "output.dir") -> None:
    """Raise a located :class:`RecipeError` when a run directory cannot be created at ``path``
    (see :func:`output_dir_problem`); nothing is created."""
    problem = output_dir_problem(path, key)
    if problem:
        raise RecipeError(problem, hint="set output.dir=PATH to a folder you can write to")


def _environment_problems(env: Envelope) -> list[str]:
    """Checks against this machine: the run directory can be made, the asked device exists."""
    problems = []
    out = env.output.dir if env.output.dir is not None else Path("runs") / env.name
    problem = output_dir_problem(out)
    if problem:
        problems.append(problem)
    if env.trainer.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            problems.append(
                "trainer.tensorboard: true, but the 'tensorboard' package is not installed; "
                "pip install 'sctune[tensorboard]', or set trainer.tensorboard=false"
            )
    if env.trainer.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
            problems.append(
                f"trainer.device: 'cuda' was asked for, but torch {torch.__version__} ({build}) "
                "sees no CUDA device; set trainer.device to auto (the GPU when there is one) "
                "or cpu"
            )
    return problems


def _hint(problems: list[str]) -> str | None:
    """The next step for the most useful of ``problems``."""
    if any(p.startswith(("backbone", "adapter", "task")) for p in problems):
        return "'sctune plugins' lists installed plugins and their options"
    if any(p.startswith("output.dir") for p in problems):
        return "set output.dir=PATH to a folder you can write to"
    return "'sctune recipes init quickstart' writes a complete, commented recipe to compare with"


# Keys that moved out of the envelope into the plugin that owns them: (section, key) -> new key.
MOVED_KEYS: dict[tuple[str, ...], str] = {("data", "min_class_cells"): "task.min_class_cells"}


def _task_problems(data: Mapping[str, Any], task_cls: Any) -> list[str]:
    """What the chosen task must agree with: the early-stopping monitor it declares."""
    from sctune.core.task import ALWAYS_MONITORED

    problems = []
    trainer = data.get("trainer")
    es = trainer.get("early_stopping") if isinstance(trainer, Mapping) else None
    monitor = es.get("monitor") if isinstance(es, Mapping) else None
    allowed = {**ALWAYS_MONITORED, **task_cls.monitors}
    if isinstance(monitor, str) and monitor not in allowed:
        problems.append(
            f"trainer.early_stopping.monitor: '{monitor}' is not a metric task "
            f"'{task_cls.name}' reports{did_you_mean(monitor, allowed)}\n"
            f"      allowed: {quoted(allowed)}"
        )
    return problems


def validate_recipe(data: Mapping[str, Any], registry: Any, *, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping against the envelope and the registered plugins' options."""
    problems: list[str] = []
    compat: list[str] = []  # the subset of problems that are adapter/backbone mismatches
    envelope_input = dict(data)
    for kind in ("backbone", "adapter", "task"):
        shape = _section_shape(kind, data[kind], registry) if kind in data else []
        if shape:  # reported here once; the envelope checks the other keys
            problems.extend(shape)
            envelope_input[kind] = {"name": "-"}
    try:
        env = Envelope.model_validate(envelope_input)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, Envelope))
        env = None
    if env is not None:
        problems.extend(_environment_problems(env))
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
    exclusive = [n for n in names if registry.entries["adapter"][n].cls.exclusive]
    if len(names) > 1 and exclusive:
        problems.append(
            f"adapter: '{exclusive[0]}' is a whole method on its own and cannot be combined with "
            f"other adapters (got {', '.join(names)})"
        )
    if len(set(names)) != len(names):
        problems.append(f"adapter: the same adapter is listed twice ({', '.join(names)})")
    if chosen["task"]:
        task_cls = registry.entries["task"][chosen["task"][0].name].cls
        problems += _task_problems(data, task_cls)
        if backbone is not None:
            needs = set(task_cls.requires_for(chosen["task"][0].config))
            lacking = needs - set(registry.entries["backbone"][backbone.name].cls.provides)
            if lacking:
                problems.append(
                    f"task: '{task_cls.name}' with these options needs "
                    f"{quoted(str(c) for c in lacking)}, which backbone '{backbone.name}' does "
                    "not provide"
                )
                compat.append(problems[-1])
        for n in names:
            if not registry.entries["adapter"][n].cls.trains and not task_cls.zero_shot:
                problems.append(
                    f"adapter: '{n}' trains nothing and needs a task with zero-shot transfer; "
                    f"task '{task_cls.name}' has none (its class declares zero_shot = False)"
                )
    if problems or env is None or backbone is None or not chosen["task"]:
        # only mismatches: a CompatibilityError (still one message listing every problem)
        error_cls = CompatibilityError if problems and problems == compat else RecipeError
        raise error_cls(
            f"recipe '{source}' is invalid ({len(problems)} problem{'s' * (len(problems) != 1)})\n  "
            + "\n  ".join(problems),
            hint=_hint(problems),
        )
    return Recipe(env, backbone, tuple(chosen["adapter"]), chosen["task"][0], source, dict(data))


def load_recipe(ref: str | Path, registry: Any, overrides: Sequence[str] = ()) -> Recipe:
    """Read (path or shipped name), apply overrides, validate.

    Relative paths written in the file resolve against the file's folder; those given in
    ``overrides`` resolve against the working directory (:mod:`sctune.core.paths`). The returned
    recipe holds absolute paths only.
    """
    from sctune.core.paths import resolve_paths

    path = find_recipe(str(ref), registry.recipe_dirs())
    raw = read_yaml(path)
    in_file = resolve_paths(
        raw, registry, path.resolve().parent, like=apply_overrides(raw, overrides)
    )
    data = resolve_paths(apply_overrides(in_file, overrides), registry, Path.cwd())
    return validate_recipe(data, registry, source=str(path))
