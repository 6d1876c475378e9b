"""Layering (style.md section 2): core imports no plugin; plugins never import each other; the CLI
imports only api and core. Checked on the source with ast, like an import-linter contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sctune"
PLUGIN_PACKAGES = ("sctune.backbones", "sctune.adapters", "sctune.tasks")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(sub: str) -> list[Path]:
    return sorted((SRC / sub).rglob("*.py"))


@pytest.mark.parametrize("path", _files("core"), ids=lambda p: p.name)
def test_core_imports_no_plugin(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith(PLUGIN_PACKAGES)}
    assert not bad, f"{path.relative_to(SRC)} imports plugin modules {sorted(bad)}"


def _plugin_of(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return ".".join(("sctune", *rel[:2]))


@pytest.mark.parametrize(
    "path",
    [p for sub in ("backbones", "adapters", "tasks") for p in _files(sub)],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_plugins_do_not_import_each_other(path: Path) -> None:
    own = _plugin_of(path)
    shared = (
        "sctune.adapters.bottleneck",
        "sctune.adapters._options",
    )  # helpers of the adapter family
    bad = {
        m
        for m in _imports(path)
        if m.startswith(PLUGIN_PACKAGES)
        and not m.startswith(own)
        and not (own.startswith("sctune.adapters") and m.startswith(shared))
    }
    assert not bad, f"{path.relative_to(SRC)} imports another plugin: {sorted(bad)}"


@pytest.mark.parametrize("path", _files("cli"), ids=lambda p: p.name)
def test_cli_imports_only_api_and_core(path: Path) -> None:
    bad = {
        m
        for m in _imports(path)
        if m.startswith("sctune")
        and not m.startswith(("sctune.api", "sctune.core", "sctune.cli"))
        and m != "sctune"
    }
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_adapters_contain_no_backbone_branches() -> None:
    """No 'if backbone == ...' in adapter code: adapters never name a backbone."""
    names = ("scgpt", "geneformer", "scbert")
    for path in _files("adapters"):
        code = "\n".join(
            line
            for line in path.read_text().lower().splitlines()
            if not line.strip().startswith("#")
        )
        tree = ast.parse(path.read_text())
        strings = [
            n.value.lower()
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and not _is_docstring(tree, n)
        ]
        for name in names:
            assert not any(name == s for s in strings), f"{path.name} compares against '{name}'"
        assert "backbone ==" not in code and "backbone.name" not in code, path.name


def _is_docstring(tree: ast.AST, node: ast.Constant) -> bool:
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and body[0].value is node
        ):
            return True
    return False
