"""Documentation checks: hook docstrings, option descriptions, the README plugin table."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from sctune.core import hookspecs
from sctune.core.manifest import read_manifest

README = Path(__file__).resolve().parents[1] / "README.md"
HOOKS = [name for name in dir(hookspecs) if name.startswith("sctune_")]


def test_every_hook_is_documented() -> None:
    assert {
        "sctune_register_backbones",
        "sctune_register_adapters",
        "sctune_register_tasks",
        "sctune_add_commands",
        "sctune_recipe_dirs",
        "sctune_before_run",
        "sctune_after_epoch",
        "sctune_after_run",
    } <= set(HOOKS)
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert re.search(r"\b(when|called)\b", doc, re.IGNORECASE), f"{name}: say when it fires"
        assert "Example::" in doc and "@hookimpl" in doc, f"{name}: give an example"
        assert f"def {name}(" in doc, f"{name}: the example implements the hook itself"


def test_every_plugin_option_has_a_description(registry) -> None:
    missing = []
    for kind in ("backbone", "adapter", "task"):
        for name in registry.names(kind):
            cls = registry.get(kind, name).cls
            for field, info in cls.config_cls.model_fields.items():
                if not (info.description or "").strip():
                    missing.append(f"{kind} {name}: {field}")
            assert getattr(cls, "description", ""), f"{kind} {name} has no description"
    assert not missing, "options without Field(description=...):\n" + "\n".join(missing)


def test_readme_plugin_table_matches_manifest() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- plugins:start -->(.*?)<!-- plugins:end -->", text, re.DOTALL)
    if match is None:
        pytest.skip("README has no plugin table between the plugins:start/end markers yet")
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")]

    def cells(line: str) -> list[str]:
        return [re.sub(r"[`*]", "", c).strip() for c in line.strip().strip("|").split("|")]

    header = cells(lines[0])
    rows = [dict(zip(header, cells(line), strict=False)) for line in lines[2:]]
    table = {(r["kind"], r["name"]) for r in rows}
    expected = {(e.kind, e.name) for e in read_manifest().plugins if e.kind != "recipes"}
    assert table == expected, (
        f"README lacks {sorted(expected - table)}; README lists unknown {sorted(table - expected)}"
    )


def test_readme_mentions_every_builtin() -> None:
    text = README.read_text(encoding="utf-8")
    for entry in read_manifest().plugins:
        if entry.kind != "recipes":
            assert f"`{entry.name}`" in text or entry.name in text, entry.name


def test_readme_api_snippet_runs_twice_from_a_fresh_folder(tmp_path, monkeypatch) -> None:
    """The README's Python API block, as a user pastes it (twice: the second time its run
    directory exists), from an empty working directory; only the epochs and cells are cut."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\nfrom sctune import api\n(.*?)```", text, re.S)
    assert block is not None
    code = "from sctune import api\n" + block.group(1)
    assert '"trainer.epochs=5"' in code
    code = code.replace('"trainer.epochs=5"', '"trainer.epochs=1", "data.max_cells=200"')
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api-lora" / "metrics.json").is_file()
    assert (tmp_path / "annotated.h5ad").is_file()
