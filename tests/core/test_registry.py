"""The manifest is the one list of built-ins, and each entry registers exactly its component."""

from __future__ import annotations

import importlib

import pytest

from sctune import testing
from sctune.core.errors import CompatibilityError, PluginError
from sctune.core.manager import get_plugin_manager
from sctune.core.manifest import read_manifest
from sctune.core.registry import Registry

HOOKS = {
    "backbone": "sctune_register_backbones",
    "adapter": "sctune_register_adapters",
    "task": "sctune_register_tasks",
}


def test_manifest_matches_registered_components(registry) -> None:
    manifest = read_manifest()
    names = [e.name for e in manifest.plugins]
    assert len(names) == len(set(names))
    for entry in manifest.plugins:
        module = importlib.import_module(entry.module)
        if entry.kind == "recipes":
            assert module.sctune_recipe_dirs()
            continue
        registered = getattr(module, HOOKS[entry.kind])()
        assert [c.name for c in registered] == [entry.name], entry
        assert registry.get(entry.kind, entry.name).plugin == entry.name
        assert registry.get(entry.kind, entry.name).distribution == "sctune"
    for kind in HOOKS:
        assert set(registry.names(kind)) == {e.name for e in manifest.plugins if e.kind == kind}


def test_plugin_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from sctune.core.manager import get_plugin_manager; "
        "from sctune.core.registry import Registry; Registry.build(get_plugin_manager()); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_blocked_builtin_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCTUNE_DISABLE_PLUGINS", "lora, scbert")
    reg = Registry.build(get_plugin_manager(autoload=False))
    assert "lora" not in reg.names("adapter") and "scbert" not in reg.names("backbone")
    assert "scgpt" in reg.names("backbone")


def test_unknown_name_lists_installed(registry) -> None:
    with pytest.raises(PluginError, match="unknown adapter 'lroa'; did you mean 'lora'"):
        registry.get("adapter", "lroa")


def test_duplicate_component_names_both_plugins() -> None:
    from sctune.adapters.lora.plugin import LoRA

    with pytest.raises(
        PluginError,
        match="adapter 'lora' is registered twice: by plugin 'lora' and by plugin 'mine'",
    ):
        testing.registry_with(("mine", testing.plugin_object(LoRA)))


def test_requires_for_is_used(registry) -> None:
    reg = testing.registry_with(testing.ToyBackbone)
    cfg = reg.get("adapter", "gene_encoder_prompt").cls.config_cls
    with pytest.raises(CompatibilityError, match="ffn_parallel"):
        reg.check_compatible("toy", "gene_encoder_prompt", cfg())
    reg.check_compatible("toy", "gene_encoder_prompt", cfg(mlp_adapter=False))
    assert "gene_token_prompt" in reg.compatible_adapters("toy")
    assert "lora" not in reg.compatible_adapters("toy")
