"""Small visible details of the command line: option listings, flags, closed pipes, recipe names."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sctune import api, testing


def test_plugin_options_show_factory_defaults(cli) -> None:
    rows = {(r["kind"], r["name"]): r for r in api.plugins(testing.registry_with())}
    assert rows[("adapter", "lora")]["options"]["targets"]["default"] == "['q', 'v']"
    result = cli("plugins", "--options")
    assert result.code == 0, result
    assert "PydanticUndefined" not in result.out
    assert "targets = ['q', 'v']" in result.out


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["plugins"], ["recipes", "init"]])
def test_flags_take_no_value_in_help(cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.code == 0, result
    assert "--help" in result.out
    assert "<bool>" not in result.out, result.out
    if not command:
        assert re.search(r"--debug\s+Show tracebacks", result.out), result.out


@pytest.mark.parametrize(
    "args", [["plugins", "--options"], ["plugins", "--json"], ["recipes"], ["--help"]]
)
def test_closed_stdout_exits_quietly(args: list[str]) -> None:
    """``sctune plugins --options | head -1`` exits 0 and prints nothing on stderr."""
    script = "from sctune.cli.main import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the first line (as '| true' does)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def _listed(cli) -> set[str]:
    result = cli("recipes")
    assert result.code == 0, result
    return {line.split()[0] for line in result.out.splitlines() if line.strip()}


def test_ambiguous_short_recipe_name_is_refused(cli) -> None:
    result = cli("validate", "small_lora_cell_type", "--no-data")
    assert result.code == 2, result
    assert "recipe 'small_lora_cell_type' is ambiguous" in result.err
    assert "geneformer/small_lora_cell_type" in result.err
    assert "scgpt/small_lora_cell_type" in result.err


def test_unknown_recipe_hint_lists_what_recipes_shows(cli) -> None:
    listed = _listed(cli)
    result = cli("validate", "quikstart", "--no-data")
    assert result.code == 2, result
    line = next(x for x in result.err.splitlines() if "shipped recipes:" in x)
    named = {n.strip() for n in line.split("shipped recipes:")[1].split(",")}
    assert named == listed


def test_unique_short_recipe_name_still_resolves(cli) -> None:
    names = sorted(n.rsplit("/", 1)[-1] for n in _listed(cli))
    unique = next(n for n in names if names.count(n) == 1 and n.startswith("small_"))
    assert api.load(unique).source.endswith(f"{unique}.yaml")
