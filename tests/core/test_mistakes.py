"""A corpus of user mistakes, each refused cleanly through the real ``sctune`` entry point.

Every case checks what the README promises: exit code 2, an ``error:`` line that names where the
mistake is (a dotted recipe key, a column, a file or the command-line argument), no traceback,
and nothing written or lost (the working folder, output root included, holds exactly what it
held before). Mistakes in the data run through both ``sctune validate`` and ``sctune run``:
validate runs every check run makes before it trains, so the two refuse the same things.

The cases are data: ``Case(id, build, expect, commands)``; ``build(ws)`` writes what the case
needs into a fresh working folder and returns the command-line arguments after the command.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sctune import testing

# --------------------------------------------------------------------------- data variants

N_CELLS, N_GENES = 60, 80


def _base() -> Any:
    return testing.tiny_adata(N_CELLS, n_genes=N_GENES, min_per_class=4)


def _set_x(adata: Any, dense: np.ndarray) -> Any:
    from scipy import sparse

    adata.X = sparse.csr_matrix(dense.astype(np.float32))
    return adata


def _dense(adata: Any) -> np.ndarray:
    return np.asarray(adata.X.toarray(), dtype=np.float64)


def _zero_cells(a: Any) -> Any:
    return a[:0].copy()


def _zero_genes(a: Any) -> Any:
    return a[:, :0].copy()


def _x_none_layer(a: Any) -> Any:
    a.layers["counts"] = a.X.copy()
    a.X = None
    return a


def _x_none(a: Any) -> Any:
    a.X = None
    return a


def _with_nan(a: Any) -> Any:
    d = _dense(a)
    d[3, 5] = np.nan
    d[7, 1] = np.nan
    return _set_x(a, d)


def _with_inf(a: Any) -> Any:
    d = _dense(a)
    d[2, 2] = np.inf
    return _set_x(a, d)


def _nan_layer(a: Any) -> Any:
    d = _dense(a)
    d[0, 0] = np.nan
    a.layers["counts"] = _set_x(a.copy(), d).X
    a.X = np.log1p(a.X)
    return a


def _scaled(a: Any) -> Any:
    d = _dense(a)
    return _set_x(a, (d - d.mean(axis=0)) / (d.std(axis=0) + 1))


def _labels(values: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def edit(a: Any) -> Any:
        labels = a.obs["cell_type"].astype(object).to_numpy()
        a.obs["cell_type"] = values(labels)
        return a

    return edit


def _empty_labels(labels: Any) -> Any:
    labels[[1, 4, 9]] = ""
    return labels


def _blank_labels(labels: Any) -> Any:
    labels[[2]] = "   "
    return labels


def _nan_labels(labels: Any) -> Any:
    labels[[0, 3]] = None
    return labels


def _mostly_empty(a: Any) -> Any:
    d = _dense(a)
    d[: int(0.7 * len(d))] = 0
    return _set_x(a, d)


def _all_empty(a: Any) -> Any:
    return _set_x(a, np.zeros(a.shape))


def _renamed_genes(a: Any) -> Any:
    a.var_names = [f"NOTAGENE{i}" for i in range(a.n_vars)]
    return a


def _split_column(values: Callable[[int], list[str]]) -> Callable[[Any], Any]:
    def edit(a: Any) -> Any:
        a.obs["part"] = values(a.n_obs)
        return a

    return edit


def _donors(n_groups: int) -> Callable[[Any], Any]:
    def edit(a: Any) -> Any:
        a.obs["donor"] = [f"d{i % n_groups}" for i in range(a.n_obs)]
        return a

    return edit


def _duplicate_cells(a: Any) -> Any:
    names = list(a.obs_names)
    names[1] = names[0]
    a.obs_names = names
    return a


VARIANTS: dict[str, Callable[[Any], Any]] = {
    "ok": lambda a: a,
    "lognorm": lambda a: testing.tiny_adata(N_CELLS, n_genes=N_GENES, counts=False),
    "zero_cells": _zero_cells,
    "zero_genes": _zero_genes,
    "x_none_layer": _x_none_layer,
    "x_none": _x_none,
    "nan": _with_nan,
    "inf": _with_inf,
    "nan_layer": _nan_layer,
    "scaled": _scaled,
    "empty_labels": _labels(_empty_labels),
    "blank_labels": _labels(_blank_labels),
    "nan_labels": _labels(_nan_labels),
    "one_class": _labels(lambda v: np.array(["B cell"] * len(v), dtype=object)),
    "mostly_empty": _mostly_empty,
    "all_empty": _all_empty,
    "renamed_genes": _renamed_genes,
    "bad_split_values": _split_column(lambda n: ["train", "holdout"] * (n // 2)),
    "all_test": _split_column(lambda n: ["test"] * n),
    "two_donors": _donors(2),
    "duplicate_cells": _duplicate_cells,
}


@pytest.fixture(scope="session")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mistake_data")
    base = _base()
    out = {}
    for name, edit in VARIANTS.items():
        path = folder / f"{name}.h5ad"
        edit(base.copy()).write_h5ad(path)
        out[name] = path
    return out


# --------------------------------------------------------------------------- workspace


def recipe_dict(data: Path, out: Path | None) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "sctune": 1,
        "name": "mistake",
        "seed": 0,
        "data": {"path": str(data), "label_column": "cell_type"},
        "backbone": {
            "name": "scgpt",
            "embsize": 16,
            "nheads": 2,
            "d_hid": 32,
            "nlayers": 1,
            "dropout": 0.0,
            "max_seq_len": 64,
        },
        "adapter": {"name": "lora"},
        "task": {"name": "cell_type", "umap": False},
        "trainer": {"epochs": 0, "batch_size": 16, "device": "cpu", "early_stopping": None},
        "output": {"plots": False},
    }
    if out is not None:
        recipe["output"]["dir"] = str(out)
    return recipe


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


DROP = object()  # a patch value that deletes the key


def _drop(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop(v) for k, v in d.items() if v is not DROP}
    return d


@dataclass
class Workspace:
    root: Path
    variants: dict[str, Path]
    trained_run: Path | None = None

    @property
    def out(self) -> Path:
        return self.root / "run"

    def data(self, variant: str = "ok") -> Path:
        return self.variants[variant]

    def recipe(self, patch: dict[str, Any] | None = None, *, variant: str = "ok") -> str:
        rec = _drop(_merge(recipe_dict(self.data(variant), self.out), patch or {}))
        path = self.root / "recipe.yaml"
        path.write_text(yaml.safe_dump(rec, sort_keys=False, allow_unicode=False))
        return str(path)

    def raw(self, content: str | bytes, name: str = "recipe.yaml") -> str:
        path = self.root / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return str(path)

    def valid_yaml(self) -> str:
        return yaml.safe_dump(recipe_dict(self.data(), self.out), sort_keys=False)

    def file(self, name: str, content: str | bytes = "x") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Workspace], list[str]]
    expect: tuple[str, ...]
    commands: tuple[str, ...] = ("validate",)
    known_gap: str | None = None  # an xfail reason: a refusal still to be fixed elsewhere


CASES: list[Case] = []
BOTH = ("validate", "run")


def case(
    id: str, *expect: str, commands: tuple[str, ...] = ("validate",), known_gap: str | None = None
) -> Callable:
    def register(build: Callable[[Workspace], list[str]]) -> Callable:
        CASES.append(Case(id, build, expect, commands, known_gap))
        return build

    return register


def recipe_case(
    id: str, patch: dict[str, Any], *expect: str, commands: tuple[str, ...] = ("validate",)
) -> None:
    CASES.append(Case(id, lambda ws: [ws.recipe(patch)], expect, commands))


def data_case(
    id: str,
    variant: str,
    *expect: str,
    patch: dict[str, Any] | None = None,
    commands: tuple[str, ...] = BOTH,
) -> None:
    CASES.append(Case(id, lambda ws: [ws.recipe(patch, variant=variant)], expect, commands))


# --------------------------------------------------------------------------- A. the recipe file

case("recipe-binary", "is a binary file", commands=BOTH)(
    lambda ws: [ws.raw(bytes(range(256)) * 4)]
)
case("recipe-nul-byte", "is a binary file")(
    lambda ws: [ws.raw(ws.valid_yaml().encode() + b"\x00\n")]
)
case("recipe-latin1", "is not UTF-8 text", "line 1", commands=BOTH)(
    lambda ws: [ws.raw("name: caf\xe9\n".encode("latin-1") + ws.valid_yaml().encode())]
)
case("recipe-utf16", "UTF-16")(lambda ws: [ws.raw(ws.valid_yaml().encode("utf-16"))])
case("recipe-empty", "is empty")(lambda ws: [ws.raw("")])
case("recipe-only-comments", "is empty")(lambda ws: [ws.raw("# nothing here\n\n")])
case("recipe-top-level-list", "must be a YAML mapping", "got a list")(
    lambda ws: [ws.raw("- sctune: 1\n- name: x\n")]
)
case("recipe-top-level-scalar", "must be a YAML mapping", "got a str")(
    lambda ws: [ws.raw("just some words\n")]
)
case("recipe-invalid-yaml", "is not valid YAML", "line 2")(
    lambda ws: [ws.raw("sctune: 1\ndata: {path: [unclosed\n")]
)
case("recipe-tab-indent", "is not valid YAML")(
    lambda ws: [ws.raw("sctune: 1\ndata:\n\tpath: x.h5ad\n")]
)
case("recipe-python-tag", "is not valid YAML")(
    lambda ws: [ws.raw("sctune: !!python/object/apply:os.system ['echo hi']\n")]
)
case("recipe-duplicate-top-key", "seed: the key appears twice", "lines", commands=BOTH)(
    lambda ws: [ws.raw(ws.valid_yaml() + "seed: 3\n")]
)
case("recipe-duplicate-nested-key", "trainer.epochs: the key appears twice")(
    lambda ws: [ws.raw(ws.valid_yaml().replace("  epochs: 0\n", "  epochs: 0\n  epochs: 5\n"))]
)
case("recipe-is-directory", "is a directory")(lambda ws: [str(ws.file("folder/x").parent)])
case("recipe-file-missing", "recipe file", "does not exist")(
    lambda ws: [str(ws.root / "nope.yaml")]
)
case(
    "recipe-ambiguous-short-name",
    "is ambiguous",
    "geneformer/small_lora_cell_type",
    "scgpt/small_lora_cell_type",
)(lambda ws: ["small_lora_cell_type", "--no-data"])
case("recipe-unknown-name", "neither a file nor a shipped recipe", "quickstart")(
    lambda ws: ["quikstart", "--no-data"]
)

# --------------------------------------------------------------------------- B. the envelope

recipe_case("schema-version-2", {"sctune": 2}, "sctune: unsupported recipe schema version 2")
recipe_case("schema-version-missing", {"sctune": DROP}, "sctune: required key is missing")
recipe_case("seed-negative", {"seed": -1}, "seed: input should be greater than or equal to 0")
recipe_case("seed-too-large", {"seed": 2**32}, "seed: input should be less than or equal to")
recipe_case("seed-string", {"seed": "abc"}, "seed: input should be a valid integer")
recipe_case("seed-float", {"seed": 1.5}, "seed: input should be a valid integer")
recipe_case("seed-bool", {"seed": True}, "seed: expected an integer")
for _id, _name, _what in [
    ("name-empty", "", "the run name is empty"),
    ("name-blank", "   ", "the run name is empty"),
    ("name-dot", ".", "is not a folder name"),
    ("name-dotdot", "..", "is not a folder name"),
    ("name-parent-escape", "../escape", "path separator"),
    ("name-absolute", "/tmp/abs", "path separator"),
    ("name-nested", "a/b", "path separator"),
    ("name-backslash", "a\\b", "path separator"),
    ("name-nul", "a\x00b", "control characters"),
    ("name-newline", "a\nb", "control characters"),
    ("name-padded", " pbmc", "whitespace"),
]:
    recipe_case(_id, {"name": _name, "output": {"dir": DROP}}, "name:", _what, commands=BOTH)
recipe_case("name-not-string", {"name": 5}, "name: input should be a valid string")
recipe_case("unknown-top-level-key", {"epochs": 3}, "epochs: unknown key")

# --------------------------------------------------------------------------- C. plugin sections

recipe_case("adapter-empty-list", {"adapter": []}, "adapter: the list is empty", commands=BOTH)
recipe_case("adapter-null", {"adapter": None}, "adapter: expected a mapping with a 'name' key")
recipe_case("adapter-bare-string", {"adapter": "lora"}, "did you mean 'adapter: {name: lora}'")
recipe_case(
    "adapter-no-name",
    {"adapter": {"name": DROP, "rank": 4}},
    "adapter.name: required key is missing",
)
recipe_case("adapter-name-int", {"adapter": {"name": 3}}, "adapter.name: expected")
recipe_case(
    "adapter-listed-twice", {"adapter": [{"name": "lora"}, {"name": "lora"}]}, "listed twice"
)
recipe_case(
    "adapter-misspelled", {"adapter": {"name": "lroa"}}, "adapter.name: unknown adapter 'lroa'"
)
recipe_case(
    "adapter-rank-zero", {"adapter": {"rank": 0}}, "adapter.rank: input should be greater than 0"
)
recipe_case("adapter-targets-empty", {"adapter": {"targets": []}}, "adapter.targets:")
recipe_case("adapter-unknown-option", {"adapter": {"rnak": 4}}, "adapter.rnak: unknown key")
recipe_case(
    "adapter-baseline-combined",
    {"adapter": [{"name": "lora"}, {"name": "zero_shot"}]},
    "cannot be combined with other adapters",
)
recipe_case("adapter-list-item-string", {"adapter": ["lora"]}, "adapter.0: expected a mapping")
recipe_case("backbone-missing", {"backbone": DROP}, "backbone: required key is missing")
recipe_case("backbone-string", {"backbone": "scgpt"}, "backbone: expected a mapping")
recipe_case("backbone-list", {"backbone": [{"name": "scgpt"}]}, "backbone: expected a mapping")
recipe_case("backbone-unknown", {"backbone": {"name": "scgtp"}}, "unknown backbone 'scgtp'")
recipe_case("backbone-unknown-option", {"backbone": {"embsze": 8}}, "backbone.embsze: unknown key")
recipe_case(
    "backbone-layers-zero", {"backbone": {"nlayers": 0}}, "backbone.nlayers: input should be"
)
recipe_case("task-unknown", {"task": {"name": "celltype"}}, "task.name: unknown task 'celltype'")
recipe_case("task-empty-list", {"task": []}, "task: expected a mapping")

# --------------------------------------------------------------------------- D. data keys

recipe_case("data-missing", {"data": DROP}, "data: required key is missing")
recipe_case("data-null", {"data": None}, "data: expected a mapping")
recipe_case("data-path-empty", {"data": {"path": ""}}, "data.path: string should have at least")
recipe_case(
    "data-path-missing-key", {"data": {"path": DROP}}, "data.path: required key is missing"
)
recipe_case(
    "split-valid-above-one",
    {"data": {"split": {"valid": 1.5}}},
    "data.split.valid: input should be less than 1",
)
recipe_case(
    "split-valid-negative",
    {"data": {"split": {"valid": -0.1}}},
    "data.split.valid: input should be greater than or equal to 0",
)
recipe_case(
    "split-sum-one",
    {"data": {"split": {"valid": 0.5, "test": 0.5}}},
    "data.split: valid (0.5) + test (0.5)",
    "leaves no training cells",
    commands=BOTH,
)
recipe_case(
    "split-sum-above-one",
    {"data": {"split": {"valid": 0.7, "test": 0.6}}},
    "data.split:",
    "leaves no training cells",
)
recipe_case(
    "split-group-without-column",
    {"data": {"split": {"method": "group"}}},
    "data.split: method 'group' needs 'group_column'",
    commands=BOTH,
)
recipe_case(
    "split-column-without-column",
    {"data": {"split": {"method": "column"}}},
    "data.split: method 'column' needs 'column'",
)
recipe_case(
    "split-group-column-unused",
    {"data": {"split": {"group_column": "donor"}}},
    "'group_column' is only read with method 'group'",
)
recipe_case(
    "split-method-unknown",
    {"data": {"split": {"method": "random"}}},
    "data.split.method: input should be",
)
recipe_case("split-key-misspelled", {"data": {"split": {"vaild": 0.1}}}, "did you mean 'valid'")
recipe_case("max-cells-zero", {"data": {"max_cells": 0}}, "data.max_cells: input should be")
recipe_case(
    "min-class-cells-zero",
    {"task": {"name": "cell_type", "min_class_cells": 0}},
    "task.min_class_cells: input should be",
)
recipe_case(
    "min-class-cells-moved",
    {"data": {"min_class_cells": 3}},
    "data.min_class_cells: this key moved to 'task.min_class_cells'",
)
recipe_case(
    "monitor-not-declared-by-task",
    {"trainer": {"early_stopping": {"monitor": "valid/acuracy"}}},
    "trainer.early_stopping.monitor: 'valid/acuracy' is not a metric task 'cell_type' reports",
    "did you mean 'valid/accuracy'",
)
recipe_case("data-kind-unknown", {"data": {"kind": "raw"}}, "data.kind: input should be")

# --------------------------------------------------------------------------- E. trainer, output

recipe_case("epochs-negative", {"trainer": {"epochs": -1}}, "trainer.epochs: input should be")
recipe_case("batch-size-zero", {"trainer": {"batch_size": 0}}, "trainer.batch_size:")
recipe_case("lr-zero", {"trainer": {"optimizer": {"lr": 0}}}, "trainer.optimizer.lr:")
recipe_case("optimizer-sgd", {"trainer": {"optimizer": {"name": "sgd"}}}, "optimizer.name:")
recipe_case("precision-8", {"trainer": {"precision": 8}}, "trainer.precision: input should be")
recipe_case("device-mps", {"trainer": {"device": "mps"}}, "trainer.device: input should be")
recipe_case(
    "early-stopping-monitor",
    {"trainer": {"early_stopping": {"monitor": "accuracy"}}},
    "trainer.early_stopping.monitor:",
)
recipe_case("learning-rate-synonym", {"trainer": {"learning_rate": 0.1}}, "'optimizer.lr'")
recipe_case("num-threads-zero", {"trainer": {"num_threads": 0}}, "trainer.num_threads:")
recipe_case("gamma-above-one", {"trainer": {"scheduler": {"gamma": 2}}}, "scheduler.gamma:")
recipe_case("trainer-null", {"trainer": None}, "trainer: expected a mapping")
recipe_case("output-dir-empty", {"output": {"dir": ""}}, "output.dir: string should have")
recipe_case("output-overwrite-maybe", {"output": {"overwrite": "maybe"}}, "output.overwrite:")
recipe_case("output-dir-nul", {"output": {"dir": "runs/a\x00b"}}, "output.dir:", "NUL byte")


@case("output-dir-is-a-file", "output.dir:", "is an existing file", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    ws.file("taken", "not a folder")
    return [ws.recipe({"output": {"dir": str(ws.root / "taken")}})]


@case("output-dir-under-a-file", "output.dir:", "because", "is a file", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    ws.file("taken", "not a folder")
    return [ws.recipe({"output": {"dir": str(ws.root / "taken" / "deeper" / "run")}})]


@case(
    "default-runs-root-is-a-file",
    "output.dir: 'runs/mistake' cannot be created",
    "is a file",
    commands=BOTH,
)
def _(ws: Workspace) -> list[str]:
    ws.file("runs", "not a folder")  # the default runs/<name>, relative to the cwd
    return [ws.recipe({"output": {"dir": DROP}})]


if __import__("importlib.util").util.find_spec("tensorboard") is None:
    recipe_case(
        "tensorboard-not-installed",
        {"trainer": {"tensorboard": True}},
        "trainer.tensorboard:",
        "not installed",
        commands=BOTH,
    )
if not __import__("torch").cuda.is_available():
    recipe_case(
        "device-cuda-without-cuda",
        {"trainer": {"device": "cuda"}},
        "trainer.device: 'cuda' was asked for",
        "sees no CUDA device",
        commands=BOTH,
    )

# --------------------------------------------------------------------------- F. overrides

case("override-without-equals", "expected dotted.key=value")(
    lambda ws: [ws.recipe(), "trainer.epochs", "--no-data"]
)
case("override-bad-yaml", "the value is not valid YAML")(
    lambda ws: [ws.recipe(), "adapter.targets=[q,", "--no-data"]
)
case("override-through-scalar", "cannot set 'x'")(
    lambda ws: [ws.recipe(), "seed.x=1", "--no-data"]
)
case("override-bad-int", "trainer.epochs: input should be a valid integer")(
    lambda ws: [ws.recipe(), "trainer.epochs=many", "--no-data"]
)
case("override-duplicate-key", "repeats a key")(
    lambda ws: [ws.recipe(), "adapter={name: lora, name: prefix_prompt}", "--no-data"]
)
case("override-seed-negative", "seed: input should be greater than or equal to 0", commands=BOTH)(
    lambda ws: [ws.recipe(), "seed=-1"]
)

# --------------------------------------------------------------------------- G. the data


@case("data-path-is-directory", "data.path:", "is a directory, not an .h5ad file", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    return [ws.recipe({"data": {"path": str(ws.file("cells/x").parent)}})]


@case("data-path-missing-file", "data.path: file", "does not exist", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    return [ws.recipe({"data": {"path": str(ws.root / "nope.h5ad")}})]


@case("data-path-not-h5ad", "data.path:", "could not be read as h5ad", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    return [ws.recipe({"data": {"path": str(ws.file("fake.h5ad", "a,b\n1,2\n"))}})]


recipe_case(
    "data-path-unknown-builtin",
    {"data": {"path": "scanpy:pbmc3k"}},
    "data.path: unknown built-in dataset",
    commands=BOTH,
)
data_case(
    "label-column-missing",
    "ok",
    "data.label_column: column 'celltype' not found",
    "available columns",
    patch={"data": {"label_column": "celltype"}},
)
data_case(
    "gene-column-missing",
    "ok",
    "data.gene_column: column 'symbol' not found in adata.var",
    patch={"data": {"gene_column": "symbol"}},
)
data_case(
    "source-layer-missing",
    "ok",
    "data.source: 'layer:counts' is not in",
    patch={"data": {"source": "layer:counts"}},
)
data_case("zero-cells", "zero_cells", "data.path:", "has no cells")
data_case("zero-genes", "zero_genes", "data.path:", "has no genes")
data_case("x-none-no-layers", "x_none", "data.path:", "holds no expression matrix")
data_case(
    "x-none-source-x",
    "x_none_layer",
    "data.source: 'X'",
    "X is None",
    patch={"data": {"source": "X"}},
)
data_case("nan-in-x", "nan", "data.source: X of 'nan.h5ad' holds 2 NaN values in 2 cells")
data_case("inf-in-x", "inf", "data.source:", "holds 1 infinite value in 1 cell ")
data_case(
    "nan-in-chosen-layer",
    "nan_layer",
    "data.source: layer:counts",
    "NaN",
    patch={"data": {"source": "layer:counts"}},
)
data_case("empty-labels", "empty_labels", "data.label_column:", "3 empty labels")
data_case("blank-labels", "blank_labels", "data.label_column:", "1 empty label (")
data_case("missing-labels", "nan_labels", "data.label_column:", "2 missing labels")
data_case("single-class", "one_class", "data.label_column:", "the same label", "'B cell'")
data_case(
    "kind-counts-on-lognorm",
    "lognorm",
    "data.kind: 'counts' was set",
    "log-normalised",
    patch={"data": {"kind": "counts"}},
)
data_case(
    "kind-lognorm-on-scaled",
    "scaled",
    "data.kind: 'lognorm' was set",
    "negative values",
    patch={"data": {"kind": "lognorm"}},
)
data_case("mostly-zero-count-cells", "mostly_empty", "data.path:", "have no counts")
data_case("all-zero-count-cells", "all_empty", "data.path:", "have no counts")
data_case("scaled-only", "scaled", "scaled")
data_case(
    "split-column-bad-values",
    "bad_split_values",
    "data.split.column: column 'part' has values",
    "holdout",
    patch={"data": {"split": {"method": "column", "column": "part"}}},
)
data_case(
    "split-column-absent",
    "ok",
    "data.split.column: column 'part' not found",
    patch={"data": {"split": {"method": "column", "column": "part"}}},
)
data_case(
    "split-column-no-training-cells",
    "all_test",
    "data.split:",
    "no cells in the training part",
    patch={"data": {"split": {"method": "column", "column": "part", "valid": 0.0}}},
)
data_case(
    "group-column-absent",
    "ok",
    "data.split.group_column: column 'donor' not found",
    patch={"data": {"split": {"method": "group", "group_column": "donor"}}},
)
data_case(
    "group-too-few-groups",
    "two_donors",
    "data.split.group_column: 'donor' has 2 groups",
    patch={"data": {"split": {"method": "group", "group_column": "donor"}}},
)


def _split_file(ws: Workspace, content: str | bytes, variant: str = "ok") -> list[str]:
    path = ws.file("split.json", content)
    return [ws.recipe({"data": {"split": {"file": str(path)}}}, variant=variant)]


def _cells(variant_path: Path) -> list[str]:
    import warnings

    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the duplicate_cells variant: anndata says so
        return [str(c) for c in ad.read_h5ad(variant_path, backed="r").obs_names]


def _saved_split(ws: Workspace, **edit: Any) -> list[str]:
    cells = _cells(ws.data())
    payload = {"train": cells[:40], "valid": cells[40:50], "test": cells[50:]}
    payload.update(edit)
    return _split_file(ws, json.dumps(payload))


case("split-file-missing", "data.split.file:", "does not exist", commands=BOTH)(
    lambda ws: [ws.recipe({"data": {"split": {"file": str(ws.root / "nope.json")}}})]
)
case("split-file-directory", "data.split.file:", "is a directory")(
    lambda ws: [ws.recipe({"data": {"split": {"file": str(ws.file("splits/x").parent)}}})]
)
case("split-file-malformed-json", "data.split.file:", "is not valid JSON", commands=BOTH)(
    lambda ws: _split_file(ws, '{"train": ["a", ')
)
case("split-file-binary", "data.split.file:", "is not valid JSON")(
    lambda ws: _split_file(ws, bytes(range(200, 256)))
)
case("split-file-json-list", "data.split.file:", "holds a JSON list")(
    lambda ws: _split_file(ws, '["a", "b"]')
)
case("split-file-missing-part", "data.split.file:", "'train' must be a list")(
    lambda ws: _split_file(ws, '{"valid": [], "test": []}')
)
case("split-file-ids-not-strings", "data.split.file:", "'valid' must be a list")(
    lambda ws: _split_file(ws, '{"train": [], "valid": [1, 2], "test": []}')
)
case("split-file-unknown-cells", "data.split.file:", "are not in the data")(
    lambda ws: _saved_split(ws, test=["no-such-cell"])
)
case("split-file-cell-twice", "data.split.file:", "appears more than once")(
    lambda ws: _saved_split(ws, test=_cells(ws.data())[:2])
)
case("split-file-empty-train", "data.split:", "no cells in the training part")(
    lambda ws: _saved_split(ws, train=[])
)


@case("split-file-duplicate-obs-names", "data.split.file:", "not unique")
def _(ws: Workspace) -> list[str]:
    cells = _cells(ws.data("duplicate_cells"))
    payload = {"train": cells[2:40], "valid": cells[40:50], "test": cells[50:]}
    return _split_file(ws, json.dumps(payload), variant="duplicate_cells")


# --------------------------------------------------------------------------- H. backbone files


def _backbone_files(ws: Workspace, backbone: str) -> dict[str, Any]:
    from sctune.backbones.scbert.plugin import ScBERTBackbone
    from sctune.backbones.scgpt.plugin import ScGPTBackbone

    cls = {"scbert": ScBERTBackbone, "scgpt": ScGPTBackbone}[backbone]
    return dict(cls.example_config(ws.root / f"bb_{backbone}", testing.adata_genes(ws.data())))


ARCH = dict.fromkeys(("embsize", "nheads", "d_hid", "nlayers", "dropout"), DROP)


def _scgpt_checkpoint(ws: Workspace, broken: str, content: bytes) -> list[str]:
    opts = _backbone_files(ws, "scgpt")
    (Path(str(opts["checkpoint"])) / broken).write_bytes(content)
    return [ws.recipe({"backbone": {"name": "scgpt", **ARCH, **opts}})]


def _scbert(ws: Workspace, key: str, content: bytes) -> list[str]:
    opts = _backbone_files(ws, "scbert")
    Path(str(opts[key])).write_bytes(content)
    section = {"name": "scbert", **opts, "max_seq_len": DROP, "embsize": DROP}
    section |= {"nheads": DROP, "d_hid": DROP, "nlayers": DROP, "dropout": DROP}
    return [ws.recipe({"backbone": section})]


@case("no-gene-overlap", "NOTAGENE", commands=BOTH)
def _(ws: Workspace) -> list[str]:
    opts = _backbone_files(ws, "scgpt")  # a vocabulary of the usual genes
    return [ws.recipe({"backbone": {"name": "scgpt", **ARCH, **opts}}, variant="renamed_genes")]


case("scgpt-checkpoint-missing", "backbone.checkpoint:", "not found", commands=BOTH)(
    lambda ws: [ws.recipe({"backbone": {"checkpoint": str(ws.root / "no_ckpt")}})]
)
case("scgpt-vocab-corrupt", "vocab.json", "is not valid JSON", commands=BOTH)(
    lambda ws: _scgpt_checkpoint(ws, "vocab.json", b"{not json")
)
case("scgpt-args-binary", "args.json", "is not valid JSON", commands=BOTH)(
    lambda ws: _scgpt_checkpoint(ws, "args.json", bytes(range(128, 256)))
)
case("scgpt-vocab-not-mapping", "vocab.json", "must be a JSON object")(
    lambda ws: _scgpt_checkpoint(ws, "vocab.json", b"[1, 2, 3]")
)
case("scbert-gene2vec-corrupt", "backbone.gene2vec:", "not a readable .npy array", commands=BOTH)(
    lambda ws: _scbert(ws, "gene2vec", b"definitely not numpy")
)
case("scbert-gene-order-binary", "backbone.gene_order:", "not a UTF-8 text file", commands=BOTH)(
    lambda ws: _scbert(ws, "gene_order", bytes(range(128, 256)))
)


# --------------------------------------------------------------------------- I. predict


@pytest.fixture(scope="session")
def trained_run(variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny finished run (0 epochs) to point predict at."""
    from sctune import api

    root = tmp_path_factory.mktemp("mistake_run")
    rec = recipe_dict(variants["ok"], root / "run")
    api.run(rec, registry=testing.registry_with(), progress=False, log=lambda m: None)
    return root / "run"


def _predict(
    ws: Workspace,
    *,
    query: str | None = None,
    damage: Callable[[Path], None] | None = None,
    output: Path | None = None,
) -> list[str]:
    run = ws.root / "trained"
    assert ws.trained_run is not None
    shutil.copytree(ws.trained_run, run)
    if damage is not None:
        damage(run)
    out = output or ws.root / "annotated.h5ad"
    return [str(run), query or str(ws.data()), "-o", str(out)]


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


P = ("predict",)
case("predict-run-dir-missing", "no_run", "is not a complete sctune run directory", commands=P)(
    lambda ws: [str(ws.root / "no_run"), str(ws.data()), "-o", str(ws.root / "o.h5ad")]
)
case("predict-run-dir-is-file", "run", commands=P)(
    lambda ws: [str(ws.file("notarun")), str(ws.data()), "-o", str(ws.root / "o.h5ad")]
)
case("predict-run-no-manifest", "adapter.json", commands=P)(
    lambda ws: _predict(ws, damage=_remove("adapter.json"))
)
case("predict-run-corrupt-manifest", "adapter.json", "is not valid JSON", commands=P)(
    lambda ws: _predict(ws, damage=_write("adapter.json", b"{oops"))
)
case("predict-run-corrupt-labels", "labels.json", commands=P)(
    lambda ws: _predict(ws, damage=_write("labels.json", bytes(range(128, 256))))
)
case("predict-run-corrupt-head", "head.safetensors", commands=P)(
    lambda ws: _predict(ws, damage=_write("head.safetensors", b"\x00\x01garbage"))
)
case("predict-run-corrupt-adapter", "adapter.safetensors", commands=P)(
    lambda ws: _predict(ws, damage=_write("adapter.safetensors", b"garbage"))
)
case(
    "predict-run-corrupt-recipe",
    "recipe.resolved.yaml",
    commands=P,
)(lambda ws: _predict(ws, damage=_write("recipe.resolved.yaml", b"\xff\xfe\x00bad: [\n")))
case("predict-query-missing", "query: file '", "does not exist", commands=P)(
    lambda ws: _predict(ws, query=str(ws.root / "nope.h5ad"))
)
case("predict-query-directory", "query: '", "is a directory", commands=P)(
    lambda ws: _predict(ws, query=str(ws.file("q/x").parent))
)
case("predict-query-not-h5ad", "query: '", "could not be read as h5ad", commands=P)(
    lambda ws: _predict(ws, query=str(ws.file("q.h5ad", "text")))
)
case(
    "predict-query-zero-cells",
    "query: 'zero_cells.h5ad'",
    "has no cells",
    "nothing to annotate",
    commands=P,
)(lambda ws: _predict(ws, query=str(ws.data("zero_cells"))))
case("predict-query-no-shared-genes", "query '", "has 0 of the run's", commands=P)(
    lambda ws: _predict(ws, query=str(ws.data("renamed_genes")))
)
case("predict-query-no-matrix", "query: 'x_none.h5ad'", "holds no expression matrix", commands=P)(
    lambda ws: _predict(ws, query=str(ws.data("x_none")))
)
case("predict-query-nan", "query (the run's data.source): X of 'nan.h5ad'", "NaN", commands=P)(
    lambda ws: _predict(ws, query=str(ws.data("nan")))
)
case("predict-query-empty-path", "query", "empty", commands=P)(lambda ws: _predict(ws, query=" "))


@case("predict-output-exists", "already exists", commands=P)
def _(ws: Workspace) -> list[str]:
    return _predict(ws, output=ws.file("taken.h5ad", "keep me"))


# --------------------------------------------------------------------------- J. the command line

case("cli-unknown-command", "no such command 'trian'", commands=("trian",))(lambda ws: [])
case("cli-unknown-option", "no such option", commands=("validate",))(
    lambda ws: [ws.recipe(), "--bogus"]
)
case("cli-missing-argument", "missing", "recipe", commands=("run",))(lambda ws: [])
case("cli-predict-missing-output", "missing", "output", commands=P)(
    lambda ws: [str(ws.root), str(ws.data())]
)
case("cli-plugins-file-missing", "plugin list", "does not exist", commands=("--plugins",))(
    lambda ws: [str(ws.root / "nope.yaml"), "plugins"]
)
case("recipes-init-unknown", "neither a file nor a shipped recipe", commands=("recipes",))(
    lambda ws: ["init", "quikstart"]
)
case("recipes-init-ambiguous", "is ambiguous", commands=("recipes",))(
    lambda ws: ["init", "small_lora_cell_type", str(ws.root / "x.yaml")]
)
case("recipes-init-dest-exists", "already exists", commands=("recipes",))(
    lambda ws: ["init", "quickstart", str(ws.file("mine.yaml", "keep me"))]
)
case("recipes-init-dest-folder-missing", "is not an existing folder", commands=("recipes",))(
    lambda ws: ["init", "quickstart", str(ws.root / "no" / "where.yaml")]
)


# --------------------------------------------------------------------------- the test

PARAMS = [
    pytest.param(
        c,
        cmd,
        id=f"{c.id}[{cmd}]",
        marks=[pytest.mark.xfail(reason=c.known_gap, strict=False)] if c.known_gap else [],
    )
    for c in CASES
    for cmd in c.commands
]


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    return {
        str(p.relative_to(root)): (
            p.is_dir(),
            p.stat().st_size if p.is_file() else 0,
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="session")
def cached_registry() -> Any:
    return testing.registry_with()


def _invoke(cli: Any, args: list[str], registry: Any) -> tuple[int, str]:
    """Through the suite's ``cli`` runner, with the cached registry unless plugins are loaded."""
    result = cli(*args, registry=None if "--plugins" in args else registry)
    return result.code, result.text


@pytest.mark.parametrize(("mistake", "command"), PARAMS)
def test_mistake_is_refused_cleanly(
    mistake: Case,
    command: str,
    tmp_path: Path,
    variants: dict[str, Path],
    cached_registry: Any,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    cli: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path, variants)
    if mistake.id.startswith("predict-"):
        ws.trained_run = request.getfixturevalue("trained_run")
    args = mistake.build(ws)
    args = [command, *args] + (["-q"] if command == "run" else [])
    before = _snapshot(tmp_path)
    code, text = _invoke(cli, args, cached_registry)
    assert code == 2, f"exit {code}\n{text}"
    assert "Traceback" not in text, text
    assert "error: " in text, text
    error = text[text.index("error: ") :]
    for phrase in mistake.expect:
        assert phrase in error, f"{phrase!r} not in:\n{error}"
    assert _snapshot(tmp_path) == before, "the command wrote, moved or deleted files"


def test_corpus_size() -> None:
    """The issue asks for at least 100 distinct mistakes."""
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) >= 100, len(CASES)


# --------------------------------------------------------------------------- not mistakes


def test_counts_in_a_layer_with_x_none_are_used(
    tmp_path: Path, variants: dict[str, Path], cached_registry: Any, monkeypatch: Any, cli: Any
) -> None:
    ws = Workspace(tmp_path, variants)
    code, text = _invoke(cli, ["validate", ws.recipe(variant="x_none_layer")], cached_registry)
    assert code == 0, text
    assert "using layer:counts (counts); X is None" in text


def test_a_few_empty_cells_are_a_warning(
    tmp_path: Path, cached_registry: Any, monkeypatch: Any, cli: Any
) -> None:
    adata = _base()
    d = _dense(adata)
    d[:3] = 0
    _set_x(adata, d).write_h5ad(tmp_path / "few_empty.h5ad")
    ws = Workspace(tmp_path, {"few": tmp_path / "few_empty.h5ad"})
    code, text = _invoke(cli, ["validate", ws.recipe(variant="few")], cached_registry)
    assert code == 0, text
    assert "warning: 3 of 60 cells (5%) have no counts in X" in text


def test_library_and_backbone_warnings_use_the_warning_channel(
    tmp_path: Path, variants: dict[str, Path], cached_registry: Any, monkeypatch: Any, cli: Any
) -> None:
    """scBERT's log-normalised note printed a raw ``UserWarning`` with a source line before."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path, variants)
    opts = _backbone_files(ws, "scbert")
    section = {"name": "scbert", **opts, **ARCH, "max_seq_len": DROP}
    recipe = ws.recipe({"backbone": section}, variant="lognorm")
    for command in ("validate", "run"):
        args = [command, recipe, "-q"] if command == "run" else [command, recipe]
        code, text = _invoke(cli, args, cached_registry)
        assert code == 0, text
        assert "warning: expression looks log-normalised" in text, text
        assert "UserWarning" not in text and "warnings.warn" not in text, text


def test_predict_reports_low_coverage_of_the_runs_genes(
    tmp_path: Path, trained_run: Path, cached_registry: Any, monkeypatch: Any, cli: Any
) -> None:
    """A query with 40% of the run's genes is annotated, with a warning that says so."""
    adata = _base()
    adata[:, : int(0.4 * N_GENES)].copy().write_h5ad(tmp_path / "narrow.h5ad")
    out = tmp_path / "annotated.h5ad"
    code, text = _invoke(
        cli,
        ["predict", str(trained_run), str(tmp_path / "narrow.h5ad"), "-o", str(out)],
        cached_registry,
    )
    assert code == 0, text
    assert f"has 32 of the run's {N_GENES} genes (40%)" in text, text
    assert "warning: query '" in text and out.is_file()


def test_validate_warns_that_run_would_refuse_an_existing_run_directory(
    tmp_path: Path, variants: dict[str, Path], cached_registry: Any, monkeypatch: Any, cli: Any
) -> None:
    ws = Workspace(tmp_path, variants)
    ws.file("run/metrics.json", "{}")
    code, text = _invoke(cli, ["validate", ws.recipe(), "--no-data"], cached_registry)
    assert code == 0, text
    assert "warning: output.dir: run directory" in text and "output.overwrite=true" in text
