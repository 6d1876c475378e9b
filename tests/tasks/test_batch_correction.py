"""batch_correction: objectives (ECS, gradient reversal, shapes), metrics on known cases, one
tiny end-to-end run through the engine, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from sctune import api, testing
from sctune.core.cells import EncoderOutput
from sctune.core.errors import DataError
from sctune.tasks.batch_correction.config import BatchCorrectionConfig
from sctune.tasks.batch_correction.head import (
    IntegrationHead,
    ecs_loss,
    grad_reverse,
    split_outputs,
)
from sctune.tasks.batch_correction.plugin import BatchCorrectionTask

pytest.importorskip("scib_metrics")
pytest.importorskip("harmonypy")


def test_ecs_matches_the_formula_on_a_hand_example() -> None:
    # cos(a, b) = 0.6, cos(a, c) = 0, cos(b, c) = 0.8 ; diagonal masked to 0, then relu
    unit = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])
    cos = np.array([[0, 0.6, 0], [0.6, 0, 0.8], [0, 0.8, 0]])
    want = np.mean(1 - (cos - 0.8) ** 2)
    assert float(ecs_loss(unit, 0.8)) == pytest.approx(want, abs=1e-6)
    anti = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # negative cosines are clipped to 0
    assert float(ecs_loss(anti, 0.8)) == pytest.approx(1 - 0.64, abs=1e-6)


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.5))


def test_dar_gradient_reaching_the_embedding_is_reversed() -> None:
    """The discriminator descends its loss; the embedding receives the opposite gradient."""
    torch.manual_seed(0)
    head = IntegrationHead(8, 2, 0, discriminator_layers=2, grl_lambda=1.0)
    emb = torch.randn(6, 8, requires_grad=True)
    b = torch.tensor([0, 1, 0, 1, 0, 1])
    _, logits, _ = split_outputs(head(EncoderOutput(cell=emb), {}, None), 2, 0)
    torch.nn.functional.cross_entropy(logits, b).backward()
    reversed_grad = emb.grad.clone()
    emb2 = emb.detach().clone().requires_grad_(True)
    plain = head.discriminator(emb2)  # the same discriminator without the reversal layer
    torch.nn.functional.cross_entropy(plain, b).backward()
    assert torch.allclose(reversed_grad, -emb2.grad, atol=1e-6)
    assert reversed_grad.abs().sum() > 0


def test_head_output_layout_and_shapes() -> None:
    head = IntegrationHead(16, 3, 20)
    out = head(EncoderOutput(cell=torch.randn(5, 16)), {}, None)
    assert out.shape == (5, 16 + 3 + 20)
    unit, bl, rec = split_outputs(out, 3, 20)
    assert unit.shape == (5, 16) and bl.shape == (5, 3) and rec.shape == (5, 20)
    assert torch.allclose(unit.norm(dim=1), torch.ones(5), atol=1e-5)
    assert IntegrationHead(16, 0, 0)(EncoderOutput(cell=torch.randn(2, 16)), {}, None).shape == (
        2,
        16,
    )


def _two_batches(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    batch = np.tile([0, 1], n // 2)
    X = np.eye(10)[labels] * 5 + rng.normal(scale=0.5, size=(n, 10))
    return X.astype(np.float32), batch.astype(str), labels.astype(str)


def test_batch_score_orders_a_mixed_and_a_separated_embedding() -> None:
    from sctune.tasks.batch_correction import metrics

    X, batch, labels = _two_batches()
    separated = X + (batch == "1")[:, None] * 20.0
    mixed = metrics.scib_scores(X, batch, labels, separated)
    apart = metrics.scib_scores(separated, batch, labels, separated)
    assert mixed["batch"] > apart["batch"] + 0.2
    assert mixed["ilisi"] > apart["ilisi"]
    for key in ("isolated_labels", "nmi", "ari", "silhouette_label", "clisi", "kbet", "total"):
        assert mixed[key] is not None, key
    no_labels = metrics.scib_scores(X, batch, None, None)
    assert no_labels["bio"] is None and no_labels["batch"] is not None


def test_prepare_refuses_a_missing_or_single_batch_column(tiny_h5ad: Path) -> None:
    obs = ad.read_h5ad(tiny_h5ad).obs
    labels = obs["cell_type"].astype(str).to_numpy()
    split = {"train": np.arange(80), "valid": np.arange(80, 100), "test": np.arange(100, 120)}
    task, cfg = BatchCorrectionTask(), BatchCorrectionConfig()
    with pytest.raises(DataError, match="column 'batch' not found") as info:
        task.prepare(labels, split, cfg, obs=obs)
    assert "cell_type" in info.value.message  # lists the available columns
    obs = obs.assign(batch="only")
    with pytest.raises(DataError, match="single batch"):
        task.prepare(labels, split, cfg, obs=obs)


def _batched_h5ad(path: Path) -> Path:
    adata = testing.tiny_adata(120, n_genes=200)
    rng = np.random.default_rng(0)
    adata.obs["batch"] = np.where(rng.random(adata.n_obs) < 0.5, "a", "b")
    adata.write_h5ad(path)
    return path


def _recipe(data: Path, out: Path, options: dict, plots: bool) -> dict:
    return {
        "sctune": 1,
        "name": "bc",
        "seed": 0,
        "data": {
            "path": str(data),
            "label_column": "cell_type",
            "split": {"method": "stratified", "valid": 0.15, "test": 0.3},
        },
        "backbone": {"name": "scgpt", **options},
        "adapter": {"name": "gene_encoder_prompt"},
        "task": {"name": "batch_correction", "n_hvg": 50, "n_pcs": 10, "umap": plots},
        "trainer": {
            "epochs": 1,
            "batch_size": 16,
            "device": "cpu",
            "early_stopping": None,
            "optimizer": {"name": "adam", "lr": 1.0e-3},
            "num_threads": 1,
        },
        "output": {"dir": str(out), "plots": plots, "overwrite": True},
    }


def test_end_to_end_scores_sctune_pca_and_harmony(registry, tmp_path: Path) -> None:
    data = _batched_h5ad(tmp_path / "two_batches.h5ad")
    options = dict(
        registry.get("backbone", "scgpt").cls.example_config(
            tmp_path / "ckpt", testing.adata_genes(data)
        )
    )
    rec = _recipe(data, tmp_path / "run", options, plots=True)
    result = api.run(rec, registry=registry, progress=False, log=lambda m: None)
    test = result.metrics["test"]
    for name in ("sctune", "pca", "harmony"):
        scores = test[name]
        for key in ("bio", "batch", "total", "ilisi", "kbet", "nmi", "pcr_comparison"):
            assert scores[key] is not None, (name, key)
    assert test["n_batches"] == 2 and test["labels"] is True
    history = [
        json.loads(line)
        for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()
        if "valid/gep" in line
    ]
    assert history and all(np.isfinite(h["valid/gep"]) and h["valid/gep"] > 0 for h in history)
    png = (result.run_dir / "umap_integration.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    state = (result.run_dir / "metrics.json").read_text()
    assert '"harmony"' in state
    out = api.predict(result.run_dir, data, tmp_path / "annotated.h5ad", registry=registry)
    got, want = ad.read_h5ad(out), ad.read_h5ad(result.run_dir / "predictions.h5ad")
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)
    # the references, for every cell of the run: PCA of the training HVGs, Harmony on it
    n = want.n_obs
    assert want.obsm["X_pca"].shape[0] == n and want.obsm["X_harmony"].shape == (
        n,
        want.obsm["X_pca"].shape[1],
    )
    assert not np.allclose(want.obsm["X_pca"], want.obsm["X_harmony"])
    np.testing.assert_array_equal(
        got.obs["sctune_batch_guess"].to_numpy(str), want.obs["sctune_batch_guess"].to_numpy(str)
    )


def test_per_batch_sampling_gives_single_batch_minibatches() -> None:
    import torch

    from sctune.core.trainer import GroupBatchSampler
    from sctune.tasks.batch_correction.config import BatchCorrectionConfig
    from sctune.tasks.batch_correction.plugin import BatchCorrectionTask

    targets = np.zeros((103, 3), dtype=np.float32)
    targets[:, 0] = np.repeat([0, 1, 2], [50, 40, 13])
    task = BatchCorrectionTask()
    assert task.sampling_groups(targets, None, BatchCorrectionConfig()) is None
    groups = task.sampling_groups(targets, None, BatchCorrectionConfig(per_batch_sampling=True))
    assert groups is not None and np.array_equal(groups, targets[:, 0].astype(int))
    gen = torch.Generator().manual_seed(0)
    sampler = GroupBatchSampler(groups, 16, gen)
    first = list(sampler)
    cells = np.concatenate(first)
    assert sorted(cells.tolist()) == list(range(103))  # every cell once per epoch
    mixed = [b for b in first if len(set(groups[b].tolist())) > 1]
    assert len(mixed) <= 3 and all(len(b) == 16 for b in first[:-1])
    if mixed:  # the leftovers of every group fill the last batches only
        assert first[-len(mixed) :] == mixed
    state = gen.get_state()
    second = list(sampler)
    gen.set_state(state)
    assert list(sampler) == second  # resumable from the generator alone
    assert first != second  # a new order every epoch


# --------------------------------------------------------------------------- DSBN


def _bn_by_hand(tokens: torch.Tensor, template: torch.nn.BatchNorm1d) -> torch.Tensor:
    """A copy of ``template`` applied to ``tokens`` ``(N, C)`` (training mode)."""
    bn = torch.nn.BatchNorm1d(tokens.shape[1], eps=6.1e-5, momentum=0.1)
    bn.load_state_dict(template.state_dict())
    bn.train()
    out = bn(tokens)
    template.load_state_dict(bn.state_dict())  # the running statistics it should now hold
    return out


def test_dsbn_normalises_each_domain_with_its_own_statistics() -> None:
    from sctune.tasks.batch_correction.head import DomainSpecificBatchNorm

    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm(6, 3)
    with torch.no_grad():
        for i, bn in enumerate(dsbn.bns):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.fill_(float(i))
    refs = [torch.nn.BatchNorm1d(6, eps=6.1e-5, momentum=0.1) for _ in range(3)]
    for ref, bn in zip(refs, dsbn.bns):
        ref.load_state_dict(bn.state_dict())
    x = torch.randn(5, 7, 6) * 3 + 2
    domains = torch.tensor([1, 0, 1, 1, 0])  # domain 2 is absent from this minibatch
    pad = torch.zeros(5, 7, dtype=torch.bool)
    pad[0, 5:] = pad[3, 2:] = pad[4, 6:] = True
    x[pad] = 100.0  # padding must neither count nor change
    dsbn.train()
    out = dsbn(x, domains, pad)
    for d in (0, 1):
        where = ~pad & (domains == d)[:, None]
        want = _bn_by_hand(x[where], refs[d])
        torch.testing.assert_close(out[where], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dsbn.bns[d].running_mean, refs[d].running_mean)
        torch.testing.assert_close(dsbn.bns[d].running_var, refs[d].running_var)
    assert torch.equal(out[pad], x[pad])
    out.sum().backward()  # the absent domain's norm gets a zero gradient (audit, DDP), not none
    assert dsbn.bns[2].weight.grad is not None and not dsbn.bns[2].weight.grad.any()
    assert dsbn.bns[0].weight.grad.abs().sum() > 0
    assert int(dsbn.bns[2].num_batches_tracked) == 0 and float(dsbn.bns[2].running_mean[0]) == 2
    # without padding and with one domain per minibatch it is scGPT's norm over (B, C, L)
    one = torch.randn(4, 9, 6)
    ref = torch.nn.BatchNorm1d(6, eps=6.1e-5, momentum=0.1)
    ref.load_state_dict(dsbn.bns[2].state_dict())
    want = ref(one.permute(0, 2, 1)).permute(0, 2, 1)
    torch.testing.assert_close(dsbn(one, torch.full((4,), 2)), want, atol=1e-5, rtol=1e-5)
    # a group with one cell, even one with a single real position, does not fail in training
    lone = torch.zeros(1, 3, dtype=torch.bool)
    lone[0, 1:] = True
    assert torch.isfinite(dsbn(torch.randn(1, 3, 6), torch.tensor([0]), lone)).all()
    # evaluation: each domain's running statistics; unseen domains (-1, or out of range) the
    # average of every domain's statistics and affine parameters
    dsbn.eval()
    out = dsbn(x, torch.tensor([0, 2, -1, 7, 1]), pad)
    bns = list(dsbn.bns)
    for row, bn in ((0, bns[0]), (1, bns[2]), (4, bns[1])):
        real = ~pad[row]
        torch.testing.assert_close(out[row][real], bn(x[row][real]))
    mean, var = (
        torch.stack([getattr(b, k) for b in bns]).mean(0) for k in ("running_mean", "running_var")
    )
    w, b = (torch.stack([getattr(bn, k) for bn in bns]).mean(0) for k in ("weight", "bias"))
    for row in (2, 3):
        real = ~pad[row]
        want = (x[row][real] - mean) / torch.sqrt(var + 6.1e-5) * w + b
        torch.testing.assert_close(out[row][real], want, atol=1e-5, rtol=1e-5)


def test_dsbn_head_hooks_the_token_stream_of_a_backbone(tmp_path: Path) -> None:
    """Bound on the toy backbone: per-cell domains from the batch change the embedding, the
    backbone's state dict is untouched, and a batch without domains is refused."""
    import dataclasses

    from sctune.core.assembly import CellModel
    from sctune.core.errors import CompatibilityError
    from sctune.core.surfaces import Surfaces
    from sctune.tasks.batch_correction.plugin import DOMAIN_FIELD

    ex = testing.example_backbone(testing.ToyBackbone, tmp_path, n_cells=4)
    keys = set(ex.module.state_dict())
    surfaces = ex.surfaces()
    with pytest.raises(CompatibilityError, match="token_stream"):  # the toy does not provide it
        IntegrationHead(ex.module.hidden_size, 2, 0, n_domains=2).bind(ex.module, surfaces)
    # the toy's input slot sees the summed gene + value embeddings: offer it as the token stream
    surfaces = dataclasses.replace(surfaces, token_stream=ex.module.input_slot)
    head = IntegrationHead(ex.module.hidden_size, 2, 0, n_domains=2)
    head.bind(ex.module, surfaces)
    assert set(ex.module.state_dict()) == keys
    assert {k for k in head.state_dict() if k.startswith("dsbn.")} >= {
        "dsbn.bns.0.weight",
        "dsbn.bns.1.running_var",
    }
    with torch.no_grad():
        head.dsbn.bns[1].running_mean.fill_(3.0)
    model = CellModel(ex.module, head).eval()

    def embed(domains: list[int]) -> torch.Tensor:
        return model({**ex.batch, DOMAIN_FIELD: torch.tensor(domains)})[0]

    a, b, c = embed([0, 0, 0, 0]), embed([1, 1, 1, 1]), embed([0, 1, -1, 0])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c[0], a[0])
    torch.testing.assert_close(c[1], b[1])
    assert not torch.allclose(c[2], a[2]) and not torch.allclose(c[2], b[2])
    with pytest.raises(RuntimeError, match=DOMAIN_FIELD):
        model(ex.batch)
    with pytest.raises(CompatibilityError, match="token_stream"):
        IntegrationHead(8, 2, 0, n_domains=2).bind(
            ex.module, Surfaces(8, ex.module.input_slot, ())
        )


DSBN_RECIPES = [
    "scgpt/small_lora_batch_correction",
    "geneformer/small_lora_batch_correction",
    "scbert/small_gene_token_prompt_batch_correction",
]


@pytest.mark.parametrize("name", DSBN_RECIPES)
def test_dsbn_end_to_end_on_every_backbone(name: str, registry, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sctune.core.errors import SctuneWarning
    from sctune.core.predictor import rebuild

    overrides = [
        "data.max_cells=90",
        "trainer.epochs=1",
        "trainer.num_threads=1",
        "trainer.device=cpu",
        "output.plots=false",
        f"output.dir={tmp_path / 'run'}",
        "task.dsbn=true",
        "task.per_batch_sampling=true",  # small batches: the first step sees one domain only
        "trainer.batch_size=8",
        *testing.light_task_overrides(registry, name),
        # GEP (the eval pass over the clean cells and a masked copy) on scGPT and scBERT;
        # Geneformer's decoder over its 25k-token vocabulary would triple the test's time
        *(["task.gep=false"] if name.startswith("geneformer") else []),
    ]
    result = api.run(name, overrides, registry=registry, progress=False, log=lambda m: None)
    run = result.run_dir
    head = load_file(run / "head.safetensors")
    for d in (0, 1):
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert f"head.dsbn.bns.{d}.{k}" in head
    assert sum(int(head[f"head.dsbn.bns.{d}.num_batches_tracked"]) for d in (0, 1)) > 0
    adapter = {k.removeprefix("backbone.") for k in load_file(run / "adapter.safetensors")}
    assert not any("dsbn" in k for k in adapter)
    if (run / "backbone.safetensors").is_file():  # a random backbone's drawn weights
        assert not any("dsbn" in k for k in load_file(run / "backbone.safetensors"))
    backbone, bcfg, asm, *_ = rebuild(run, registry)
    keys = set(asm.model.backbone.state_dict())  # the built backbone's, plus the adapter's
    assert keys - set(backbone.build(bcfg, load_weights=False).state_dict()) <= adapter
    assert not any("dsbn" in k for k in keys)
    # predict on the run's own cells reproduces the run
    want = ad.read_h5ad(run / "predictions.h5ad")
    got = ad.read_h5ad(api.predict(run, run / "predictions.h5ad", tmp_path / "again.h5ad"))
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)
    # cells of batches never seen in training: the average norm, finite embeddings
    unseen = want.copy()
    unseen.obs["batch"] = "new_" + unseen.obs["batch"].astype(str)
    unseen.write_h5ad(tmp_path / "unseen.h5ad")
    with pytest.warns(SctuneWarning, match="DSBN"):
        out = api.predict(run, tmp_path / "unseen.h5ad", tmp_path / "unseen_out.h5ad")
    emb = ad.read_h5ad(out).obsm["X_sctune"]
    assert emb.shape == want.obsm["X_sctune"].shape and np.isfinite(emb).all()


def test_validate_refuses_dsbn_on_a_backbone_without_token_stream() -> None:
    from sctune.core.capabilities import Capability
    from sctune.core.errors import CompatibilityError

    assert Capability.TOKEN_STREAM not in testing.ToyBackbone.provides
    registry = testing.registry_with(testing.ToyBackbone)
    recipe = {
        "sctune": 1,
        "name": "dsbn-refused",
        "data": {"path": "cells.h5ad", "label_column": "cell_type"},
        "backbone": {"name": "toy"},
        "adapter": {"name": "full"},
        "task": {"name": "batch_correction", "dsbn": True},
    }
    with pytest.raises(CompatibilityError, match="token_stream"):
        api.load(recipe, registry=registry)
    api.load({**recipe, "task": {"name": "batch_correction"}}, registry=registry)


def test_metrics_of_a_large_test_set_use_a_fixed_sample() -> None:
    """Every integration metric is pairwise: above ``embedding_metric_cells`` test cells they
    are scored on a fixed random sample, and the metrics say so."""
    import pandas as pd

    task = BatchCorrectionTask()
    rng = np.random.default_rng(0)
    n = 200
    labels = np.array(["T", "B"])[rng.integers(0, 2, n)]
    obs = pd.DataFrame({"batch": np.array(["a", "b"])[rng.integers(0, 2, n)]})
    split = {"train": np.arange(150), "valid": np.arange(150, 170), "test": np.arange(170, n)}
    cfg = BatchCorrectionConfig(embedding_metric_cells=60, umap=False, references=[])
    state = task.prepare(labels, split, cfg, obs=obs)
    targets = task.targets(labels, state, obs=obs)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    out = task.evaluate(
        logits=np.zeros((n, 1)), targets=targets, embeddings=emb, prepared=state, config=cfg,
        out_dir=None,
    )  # fmt: skip
    assert out["n_cells"] == 60 and "of the 200 test cells" in " ".join(out["notes"])
    assert out["sctune"]["total"] is not None
