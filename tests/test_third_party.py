"""A third-party plugin, simulated: a throwaway distribution with an entry point in group 'sctune'.

The package is written into ``tmp_path`` (module + ``*.dist-info`` with ``entry_points.txt``) and
put on ``sys.path``, so ``importlib.metadata`` discovers it exactly as it would an installed
``pip install sctune-toyplug``. Its backbone is standalone: it imports only ``sctune.core``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sctune import api, testing
from sctune.core.errors import CompatibilityError, PluginError

DIST, VERSION, MODULE = "sctune-toyplug", "0.3.1", "sctune_toyplug"

PLUGIN_SOURCE = '''
"""A toy third-party backbone: mean of (gene + value) embeddings through one MLP block."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from sctune import hookimpl
from sctune.core.backbone import Backbone
from sctune.core.capabilities import Capability
from sctune.core.config import PluginConfig


class MeanConfig(PluginConfig):
    genes_file: str | None = Field(None, description="vocabulary, one gene per line")
    hidden: int = Field(16, ge=2, description="embedding width")


def _module(n_genes, hidden):
    import torch
    from torch import nn

    from sctune.core.cells import EncoderOutput
    from sctune.core.surfaces import TransformSlot

    class MeanEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden_size = hidden
            self.gene = nn.Embedding(n_genes + 1, hidden, padding_idx=0)
            self.value = nn.Linear(1, hidden)
            self.input_slot = TransformSlot()
            self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
            self.attn_slot = TransformSlot()

        def forward(self, batch):
            h = self.input_slot(self.gene(batch["ids"]) + self.value(batch["vals"].unsqueeze(-1)))
            h = self.attn_slot(h + self.mlp(h))
            keep = (~batch["padding_mask"]).unsqueeze(-1).float()
            return EncoderOutput(cell=(h * keep).sum(1) / keep.sum(1).clamp(min=1.0))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return MeanEncoder()


class MeanBackbone(Backbone):
    name = "meanmlp"
    config_cls = MeanConfig
    provides = frozenset({Capability.INPUT_EMBEDDING, Capability.ATTENTION_OUTPUT})
    description = "toy third-party backbone"
    licence = "BSD-3-Clause"

    def _genes(self, config):
        return Path(config.genes_file).read_text().split()

    def build(self, config, *, load_weights=True):
        return _module(len(self._genes(config)), config.hidden)

    def gene_match(self, genes, config):
        from sctune.core.cells import GeneMatch

        vocab = set(self._genes(config))
        return GeneMatch(len(genes), sum(g in vocab for g in genes), len(vocab), "symbol")

    def tokenize(self, expr, config, *, seed):
        import torch

        from sctune.core.cells import TokenizedCells

        index = {g: i + 1 for i, g in enumerate(self._genes(config))}
        cols = np.array([index.get(g, 0) for g in expr.genes])
        X = expr.X.tocsr()
        ids, vals = [], []
        for r in range(X.shape[0]):
            sl = slice(X.indptr[r], X.indptr[r + 1])
            keep = cols[X.indices[sl]] > 0
            ids.append(np.r_[0, cols[X.indices[sl]][keep]].astype(np.int64))
            vals.append(np.r_[0.0, np.log1p(X.data[sl][keep])].astype(np.float32))
        return TokenizedCells({"ids": ids, "vals": vals}, {"ids": 0, "vals": 0.0},
                              {"ids": torch.long, "vals": torch.float32})

    def surfaces(self, module):
        from sctune.core.surfaces import BlockSurfaces, Surfaces

        return Surfaces(module.hidden_size, module.input_slot,
                        (BlockSurfaces(attention_output=module.attn_slot),))

    @classmethod
    def example_config(cls, workdir, genes):
        path = Path(workdir) / "meanmlp_genes.txt"
        path.write_text("\\n".join(dict.fromkeys(genes)))
        return {"genes_file": str(path), "hidden": 16}


@hookimpl
def sctune_register_backbones():
    return [MeanBackbone]
'''


def _write_distribution(
    site: Path,
    source: str = PLUGIN_SOURCE,
    *,
    module: str = MODULE,
    dist: str = DIST,
    ep_name: str = "toyplug",
) -> Path:
    pkg = site / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text(f"[sctune]\n{ep_name} = {module}.plugin\n")
    return site


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy distribution, importable and discoverable through entry points."""
    site = _write_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith(MODULE)]:
        del sys.modules[name]


def _recipe(tmp_path: Path, data: Path, adapter: dict, registry) -> dict:
    options = registry.get("backbone", "meanmlp").cls.example_config(
        tmp_path, testing.adata_genes(data)
    )
    return {
        "sctune": 1,
        "name": "toyplug",
        "seed": 0,
        "data": {"path": str(data)},
        "backbone": {"name": "meanmlp", **options},
        "adapter": adapter,
        "task": {"name": "cell_type", "umap": False},
        "trainer": {
            "epochs": 2,
            "batch_size": 16,
            "device": "cpu",
            "early_stopping": None,
            "optimizer": {"lr": 1.0e-3},
        },
        "output": {"dir": str(tmp_path / "run"), "plots": False},
    }


def test_entry_point_is_discovered(installed: Path) -> None:
    from importlib import metadata

    eps = [ep for ep in metadata.entry_points(group="sctune") if ep.name == "toyplug"]
    assert len(eps) == 1 and eps[0].dist.name == DIST


def test_plugins_lists_distribution_and_version(installed: Path, cli) -> None:
    result = cli("plugins", "--json")
    assert result.code == 0, result
    rows = {r["name"]: r for r in json.loads(result.out)}
    row = rows["meanmlp"]
    assert (row["kind"], row["distribution"], row["version"]) == ("backbone", DIST, VERSION)
    assert row["licence"] == "BSD-3-Clause"
    assert row["capabilities"] == ["attention_output", "input_embedding"]
    assert rows["scgpt"]["distribution"] == "sctune"
    table = cli("plugins")
    assert table.code == 0 and "meanmlp" in table.out and VERSION in table.out


def test_trains_end_to_end_and_reloads(installed: Path, tmp_path: Path, tiny_h5ad: Path) -> None:
    registry = api.get_registry()
    assert registry.get("backbone", "meanmlp").distribution == DIST
    rec = _recipe(tmp_path, tiny_h5ad, {"name": "gene_token_prompt"}, registry)
    result = api.run(rec, registry=registry, progress=False, log=lambda m: None)
    assert result.metrics["train"]["epochs_run"] == 2
    assert result.metrics["parameters"]["adapter"] > 0
    env = json.loads((result.run_dir / "env.json").read_text())
    assert env["plugins"]["backbone:meanmlp"] == f"{DIST} {VERSION}"
    out = api.predict(result.run_dir, tiny_h5ad, tmp_path / "annotated.h5ad", registry=registry)
    import anndata as ad

    got, want = ad.read_h5ad(out), ad.read_h5ad(result.run_dir / "predictions.h5ad")
    assert (
        got.obs["sctune_prediction"].to_numpy() == want.obs["sctune_prediction"].to_numpy()
    ).all()


def test_gene_encoder_prompt_fits_only_without_mlp_adapter(
    installed: Path, tmp_path: Path, tiny_h5ad: Path
) -> None:
    """``requires_for``: the attention-output half alone fits a backbone with no FFN branch."""
    registry = api.get_registry()
    rec = _recipe(tmp_path, tiny_h5ad, {"name": "gene_encoder_prompt"}, registry)
    with pytest.raises(CompatibilityError, match="ffn_parallel"):
        api.validate(rec, registry=registry, check_data=False)
    rec["adapter"] = {"name": "gene_encoder_prompt", "mlp_adapter": False, "layers": "all"}
    api.validate(rec, registry=registry, check_data=False)
    report = api.inspect(rec, registry=registry)
    assert report["adapters"][0]["trainable"] > 0
    assert report["gradient_audit"]["ok"] is True


def test_validate_refuses_prefix_prompt(
    installed: Path, tmp_path: Path, tiny_h5ad: Path, cli
) -> None:
    registry = api.get_registry()
    rec = _recipe(tmp_path, tiny_h5ad, {"name": "prefix_prompt"}, registry)
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(rec))
    result = cli("validate", path)
    assert result.code == 2, result
    assert "Traceback" not in result.text
    assert "adapter 'prefix_prompt' cannot be applied to backbone 'meanmlp'" in result.err
    assert "prompt_tokens" in result.err
    line = next(x for x in result.err.splitlines() if "adapters compatible with meanmlp" in x)
    for name in ("full", "gene_token_prompt", "head", "zero_shot"):
        assert name in line
    assert "lora" not in line and "prefix_prompt" not in line


def test_disable_plugins_blocks_it(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCTUNE_DISABLE_PLUGINS", "toyplug")
    assert "meanmlp" not in api.get_registry().names("backbone")
    monkeypatch.setenv("SCTUNE_DISABLE_PLUGINS", "")
    monkeypatch.setenv("SCTUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "meanmlp" not in api.get_registry().names("backbone")
    monkeypatch.delenv("SCTUNE_DISABLE_PLUGIN_AUTOLOAD")
    assert "meanmlp" in api.get_registry().names("backbone")


def test_import_failure_names_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _write_distribution(
        tmp_path / "site",
        "import not_a_real_module_xyz\n",
        module="sctune_broken",
        dist="sctune-broken",
        ep_name="broken",
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginError) as info:
        api.get_registry()
    message = info.value.render()
    assert "plugin 'broken'" in message and "sctune-broken" in message
    assert "not_a_real_module_xyz" in message and "SCTUNE_DISABLE_PLUGINS=broken" in message
    monkeypatch.setenv("SCTUNE_DISABLE_PLUGINS", "broken")
    assert "scgpt" in api.get_registry().names("backbone")


def test_misspelled_hook_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (
        "from sctune import hookimpl\n\n@hookimpl\n"
        "def sctune_register_backbone():\n    return []\n"
    )
    site = _write_distribution(
        tmp_path / "site", source, module="sctune_typo", dist="sctune-typo", ep_name="typo"
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(
        PluginError, match="plugin .typo.*did you mean .sctune_register_backbones."
    ):
        api.get_registry()
    for name in [m for m in sys.modules if m.startswith("sctune_typo")]:
        del sys.modules[name]


def test_duplicate_names_are_an_error(installed: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "second.py").write_text(PLUGIN_SOURCE)
    listing = local / "plugins.yaml"
    listing.write_text("plugins:\n  - {name: second, module: second.py}\n")
    with pytest.raises(PluginError) as info:
        api.get_registry([listing])
    message = info.value.message
    assert "backbone 'meanmlp' is registered twice" in message
    assert "'toyplug'" in message and "'second'" in message


def test_local_plugins_file(tmp_path: Path, tiny_h5ad: Path, cli) -> None:
    """``--plugins my_plugins.yaml`` registers an unpackaged module (a .py path or a module name)."""
    local = tmp_path / "local"
    (local / "my_pkg").mkdir(parents=True)
    (local / "my_pkg" / "__init__.py").write_text("")
    (local / "my_pkg" / "toy.py").write_text(PLUGIN_SOURCE)
    listing = local / "plugins.yaml"
    listing.write_text("plugins:\n  - {name: mine, module: my_pkg.toy}\n")
    try:
        registry = api.get_registry([listing], autoload=False)
        entry = registry.get("backbone", "meanmlp")
        assert (entry.plugin, entry.distribution) == ("mine", "(local)")
        result = cli("--plugins", listing, "plugins", "--json")
        assert result.code == 0, result
        assert "meanmlp" in {r["name"] for r in json.loads(result.out)}
        assert "meanmlp" not in {r["name"] for r in json.loads(cli("plugins", "--json").out)}
    finally:
        for name in [m for m in sys.modules if m.startswith("my_pkg")]:
            del sys.modules[name]
        if str(local) in sys.path:
            sys.path.remove(str(local))
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins:\n  - {name: nope, module: no_such_module_abc}\n")
    with pytest.raises(PluginError, match="plugin 'nope' failed to import"):
        api.get_registry([bad], autoload=False)
    result = cli("--plugins", bad, "plugins")
    assert result.code == 2 and "plugin 'nope'" in result.err and "Traceback" not in result.text


TASK_DIST, TASK_MODULE = "sctune-abovemedian", "sctune_abovemedian"
TASK_SOURCE = '''
"""A third-party task: is a numeric obs column above its training median? (ROC AUC, a score)."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from sctune import hookimpl
from sctune.core.config import PluginConfig
from sctune.core.task import Preflight, Task


class AboveMedianConfig(PluginConfig):
    column: str = Field("n_counts", description="numeric obs column")


class AboveMedian(Task):
    name = "above_median"
    config_cls = AboveMedianConfig
    description = "binary: obs[column] above its training median"
    monitors = {"valid/auc": "max"}

    def preflight(self, labels, split, config, *, obs=None):
        return Preflight(info=[f"above-median of {config.column}"])

    def prepare(self, labels, split, config, *, obs=None, expression=None):
        values = obs[config.column].to_numpy(dtype=float)
        return {"column": config.column, "median": float(np.median(values[split["train"]]))}

    def targets(self, labels, prepared, *, obs=None, expression=None):
        return (obs[prepared["column"]].to_numpy(dtype=float) > prepared["median"]).astype(
            np.float32
        )

    def head(self, hidden_size, prepared, config):
        from torch import nn

        return nn.Linear(hidden_size, 1)

    def loss(self, logits, targets, prepared, config):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())

    def _auc(self, logits, targets):
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(targets, logits[:, 0])) if len(set(targets)) > 1 else 0.5

    def validation_metrics(self, logits, targets, prepared, config):
        return {"auc": self._auc(logits, targets)}

    def evaluate(self, *, logits, targets, embeddings, prepared, config, out_dir):
        return {"auc": self._auc(logits, targets)}

    def annotate(self, logits, prepared):
        return {"sctune_score": (1 / (1 + np.exp(-logits[:, 0]))).astype(np.float32)}

    def summary(self, metrics):
        return f"AUC {metrics['auc']:.3f}"

    def state(self, prepared):
        return dict(prepared)

    def from_state(self, state):
        return dict(state)


@hookimpl
def sctune_register_tasks():
    return [AboveMedian]
'''


def test_a_third_party_task_trains_predicts_and_reloads_from_the_cli(
    tmp_path: Path, tiny_h5ad: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    """A task shipped as its own distribution: validate refuses a metric it does not declare,
    the CLI trains with early stopping on its own metric, and predict reproduces its column."""
    import anndata as ad
    import numpy as np
    import yaml

    site = _write_distribution(
        tmp_path / "site", TASK_SOURCE, module=TASK_MODULE, dist=TASK_DIST, ep_name="abovemedian"
    )
    monkeypatch.syspath_prepend(str(site))
    registry = api.get_registry()
    assert registry.get("task", "above_median").distribution == TASK_DIST
    options = registry.get("backbone", "scgpt").cls.example_config(
        tmp_path, testing.adata_genes(tiny_h5ad)
    )
    rec = {
        "sctune": 1,
        "name": "above-median",
        "data": {"path": str(tiny_h5ad)},
        "backbone": {"name": "scgpt", **options},
        "adapter": {"name": "lora"},
        "task": {"name": "above_median"},
        "trainer": {
            "epochs": 3,
            "device": "cpu",
            "early_stopping": {"monitor": "valid/accuracy", "patience": 2},
        },
        "output": {"dir": str(tmp_path / "run"), "plots": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    refused = cli("validate", path)
    assert refused.code == 2 and "'valid/accuracy' is not a metric task 'above_median'" in (
        refused.text
    )
    rec["trainer"]["early_stopping"]["monitor"] = "valid/auc"
    path.write_text(yaml.safe_dump(rec))
    run = cli("run", path, "--quiet")
    assert run.code == 0, run.text
    assert "test: AUC" in run.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("valid/auc" in m for m in log)  # the engine logged the task's own metric
    out = tmp_path / "annotated.h5ad"
    pred = cli("predict", tmp_path / "run", tiny_h5ad, "-o", out)
    assert pred.code == 0, pred.text
    got, want = ad.read_h5ad(out), ad.read_h5ad(tmp_path / "run" / "predictions.h5ad")
    np.testing.assert_allclose(got.obs["sctune_score"], want.obs["sctune_score"], atol=1e-6)
    for name in [m for m in sys.modules if m.startswith(TASK_MODULE)]:
        del sys.modules[name]
