"""Batch correction: scGPT's integration objectives (GEP, GEPC, ECS, DAR), on any backbone.

The head reads the encoder output: GEP predicts masked input tokens from the per-token outputs
with the backbone's own masked objective (:class:`sctune.core.objective.MaskedModelling`); GEPC,
ECS and DAR act on the cell embedding. Head outputs per cell:
``[unit embedding | batch logits | HVG reconstruction | GEP loss sum, masked count]``; the loss
is ``gep_weight * GEP + gepc_weight * MSE + ecs_weight * ECS + dar_weight * CE(batch)``, with the batch
discriminator behind a gradient reversal layer, so the backbone's adapters learn embeddings the
discriminator cannot tell apart by batch. Test cells are scored with scib-metrics for sctune's
embedding and, on the same cells, for the uncorrected PCA of log-normalised HVGs and Harmony.

Targets per cell (float32): ``[batch index, label index, log-normalised HVG expression ...]``;
batch indices below ``n_train_batches`` are the discriminator's classes (batches with training
cells), others are ``-1`` for the loss. Labels are used only to evaluate.

DSBN (``dsbn: true``, scGPT's domain-specific batch norm): the head owns one BatchNorm1d per
training batch and hooks it onto the backbone's TOKEN_STREAM insertion point (the summed token
embeddings entering the first block, where scGPT's own DSBN sits)
(:meth:`IntegrationHead.bind`); each cell's batch reaches it as the model input
:data:`DOMAIN_FIELD` (:meth:`BatchCorrectionTask.model_inputs`: the training batch index, ``-1``
for batches without training cells, which use the average of the training batches' norms).

Expression: ``prepare`` and ``targets`` take an optional ``expression`` (a
:class:`sctune.core.cells.Expression`); the engine passes none when the file is read in chunks
(``data.stream: true``), and then the GEPC term and the PCA/Harmony references are off and say so.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from sctune import hookimpl
from sctune.core.capabilities import Capability
from sctune.core.errors import DataError, SctuneWarning, did_you_mean
from sctune.core.preprocess import lognorm, select_hvg
from sctune.core.task import Direction, Preflight, Task
from sctune.tasks.batch_correction.config import BatchCorrectionConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

DOMAIN_FIELD = "batch_domain"
"""The model-input field (batch key) holding each cell's DSBN domain: its training batch index,
``-1`` for a batch without training cells."""

NO_EXPRESSION = (
    "no expression matrix was passed to the task (data.stream: true keeps it in the file): "
    "GEPC and the PCA/Harmony references are off"
)


@dataclass
class BatchState:
    batch_column: str
    batches: list[str]  # training batches first (the discriminator's classes), then the others
    n_train_batches: int
    labels: list[str]
    hvg: list[str] = field(default_factory=list)
    dar: bool = True
    gepc: bool = True
    gep: bool = False

    @property
    def n_disc(self) -> int:
        return self.n_train_batches if self.dar else 0

    @property
    def n_rec(self) -> int:
        return len(self.hvg) if self.gepc else 0


class BatchCorrectionTask(Task):
    name: ClassVar[str] = "batch_correction"
    config_cls = BatchCorrectionConfig
    description: ClassVar[str] = (
        "batch correction (GEPC, ECS, DAR on the cell embedding; scib metrics vs PCA/Harmony)"
    )
    head_input: ClassVar[Literal["cell", "encoder"]] = "encoder"
    monitors: ClassVar[dict[str, Direction]] = {
        "valid/gep": "min",
        "valid/gepc_mse": "min",
        "valid/ecs": "min",
        "valid/batch_accuracy": "min",  # the discriminator cannot tell batches apart
    }

    @classmethod
    def requires_for(cls, config: Any) -> frozenset[Capability]:
        needs = {Capability.MASKED_MODELLING} if config.gep else set()
        if config.dsbn:  # the per-batch norm sits on the summed token embeddings
            needs.add(Capability.TOKEN_STREAM)
        return frozenset(needs)

    @classmethod
    def model_input_fields(cls, config: Any) -> frozenset[str]:
        return frozenset({DOMAIN_FIELD}) if config.dsbn else frozenset()

    def model_inputs(
        self, targets: np.ndarray, prepared: BatchState, config: Any
    ) -> dict[str, np.ndarray]:
        """DSBN: each cell's domain, its training batch index (``-1``: a batch without training
        cells, normalised with the average of the training batches' norms; warned)."""
        if not config.dsbn:
            return {}
        b = np.asarray(targets)[:, 0].astype(np.int64)
        domain = np.where((b >= 0) & (b < prepared.n_train_batches), b, -1)
        unseen = int((domain < 0).sum())
        if unseen:
            warnings.warn(
                f"DSBN: {unseen} cell{'s' * (unseen != 1)} of batches without training cells "
                f"are normalised with the average of the {prepared.n_train_batches} training "
                "batches' norms",
                SctuneWarning,
                stacklevel=2,
            )
        return {DOMAIN_FIELD: domain}

    @classmethod
    def example_config(cls) -> dict[str, object]:
        # light: the references and kBET are covered by tests/tasks/test_batch_correction.py
        return {"batch_column": "sample", "n_hvg": 50, "references": [], "kbet": False}

    def preflight(
        self, labels: np.ndarray, split: dict[str, np.ndarray], config: Any, *, obs: Any = None
    ) -> Preflight:
        report = Preflight()
        if obs is not None:  # refused before anything is built (validate too)
            batches = self._batches(obs, config.batch_column)
            found = sorted(set(batches.tolist()))
            if len(found) < 2:
                report.errors.append(
                    f"task.batch_column: '{config.batch_column}' has one batch ({found[0]!r}); "
                    "batch correction needs at least 2"
                )
            else:
                report.info.append(f"{len(found)} batches in '{config.batch_column}'")
        if len(set(labels.tolist())) < 2:
            report.info.append("one cell-type label: bio-conservation metrics are off")
        return report

    # ------------------------------------------------------------------ state

    def _batches(self, obs: Any, column: str) -> np.ndarray:
        if obs is None:
            raise DataError("task 'batch_correction' needs adata.obs (the engine gave none)")
        if column not in obs.columns:
            raise DataError(
                f"task.batch_column: column '{column}' not found in adata.obs"
                f"{did_you_mean(column, obs.columns)}\n"
                f"  available columns: {', '.join(map(str, obs.columns)) or '(none)'}",
                hint="name the column holding each cell's batch (study, donor, run), e.g. "
                "task.batch_column=sample",
            )
        values = obs[column]
        if values.isna().any():
            raise DataError(
                f"task.batch_column: '{column}' has {int(values.isna().sum())} missing values",
                hint="fill or drop cells without a batch",
            )
        return values.astype(str).to_numpy()

    def prepare(
        self,
        labels: np.ndarray,
        split: dict[str, np.ndarray],
        config: Any,
        *,
        obs: Any = None,
        expression: Any = None,
    ) -> BatchState:
        batch = self._batches(obs, config.batch_column)
        train_batches = sorted(set(batch[split["train"]].tolist()))
        every = sorted(set(batch.tolist()))
        if len(every) < 2:
            raise DataError(
                f"task.batch_column: '{config.batch_column}' has a single batch "
                f"('{every[0] if every else ''}', {len(batch)} cells); batch correction needs "
                "at least 2",
                hint="combine the batches into one h5ad with a batch column, or point "
                "task.batch_column at another column",
            )
        if len(train_batches) < 2:
            raise DataError(
                f"task.batch_column: the training split holds one batch ({train_batches}); the "
                "batch discriminator needs cells of at least 2 batches in training",
                hint="use a random or stratified split rather than a split by batch",
            )
        others = [b for b in every if b not in train_batches]
        state = BatchState(
            config.batch_column,
            train_batches + others,
            len(train_batches),
            sorted(set(map(str, labels.tolist()))),
            dar=config.dar,
            gepc=config.gepc,
            gep=config.gep,
        )
        if expression is not None:
            state.hvg = select_hvg(expression, split["train"], config.n_hvg)
        else:
            state.gepc = False
        return state

    def targets(
        self, labels: np.ndarray, prepared: BatchState, *, obs: Any = None, expression: Any = None
    ) -> np.ndarray:
        batch = self._batches(obs, prepared.batch_column)
        b_index = {b: i for i, b in enumerate(prepared.batches)}
        l_index = {c: i for i, c in enumerate(prepared.labels)}
        n_hvg = len(prepared.hvg) if expression is not None else 0
        out = np.zeros((len(batch), 2 + n_hvg), dtype=np.float32)
        out[:, 0] = [b_index.get(b, -1) for b in batch]
        out[:, 1] = [l_index.get(str(c), -1) for c in labels]
        if n_hvg:
            pos = {g: i for i, g in reversed(list(enumerate(expression.genes)))}
            cols = [pos[g] for g in prepared.hvg]
            out[:, 2:] = lognorm(expression)[:, cols].toarray()
        return out

    # ------------------------------------------------------------------ training

    def head(self, hidden_size: int, prepared: BatchState, config: Any) -> nn.Module:
        from sctune.tasks.batch_correction.head import IntegrationHead

        return IntegrationHead(
            hidden_size,
            prepared.n_disc,
            prepared.n_rec,
            gep=prepared.gep,
            mask_ratio=config.mask_ratio,
            discriminator_layers=config.discriminator_layers,
            grl_lambda=config.grl_lambda,
            n_domains=prepared.n_train_batches if config.dsbn else 0,
        )

    def terms(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: BatchState, config: Any
    ) -> dict[str, torch.Tensor]:
        """The named, unweighted loss terms that are switched on."""
        import torch.nn.functional as F

        from sctune.tasks.batch_correction.head import ecs_loss, gep_columns, split_outputs

        logits = logits.float()
        unit, batch_logits, recon = split_outputs(
            logits, prepared.n_disc, prepared.n_rec, prepared.gep
        )
        targets = targets.float()
        out: dict[str, torch.Tensor] = {}
        if prepared.gep:
            total, count = gep_columns(logits)
            if float(count.detach().sum()) > 0:
                out["gep"] = total.sum() / count.sum()
        if prepared.n_rec:
            want = targets[:, 2:]
            if want.shape[1] == recon.shape[1]:  # predict-time batches carry no expression
                out["gepc"] = F.mse_loss(recon, want)
        if config.ecs and len(unit) > 1:
            out["ecs"] = ecs_loss(unit, config.ecs_threshold)
        if prepared.n_disc:
            b = targets[:, 0].long()
            known = (b >= 0) & (b < prepared.n_disc)
            if bool(known.any()):
                out["dar"] = F.cross_entropy(batch_logits[known], b[known])
        return out

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: BatchState, config: Any
    ) -> torch.Tensor:
        weights = {
            "gep": config.gep_weight,
            "gepc": config.gepc_weight,
            "ecs": config.ecs_weight,
            "dar": config.dar_weight,
        }
        total = logits.float().sum() * 0.0
        for key, value in self.terms(logits, targets, prepared, config).items():
            total = total + weights[key] * value
        return total

    def validation_metrics(
        self, logits: np.ndarray, targets: np.ndarray, prepared: BatchState, config: Any
    ) -> dict[str, float]:
        import torch

        out: dict[str, float] = {}
        with torch.no_grad():
            for k, v in self.terms(
                torch.as_tensor(logits), torch.as_tensor(targets), prepared, config
            ).items():
                if k == "gep":
                    out["gep"] = float(v)
                elif k == "gepc":
                    out["gepc_mse"] = float(v)
                elif k == "ecs":
                    out["ecs"] = float(v)
        if prepared.n_disc:
            from sctune.tasks.batch_correction.head import split_outputs

            _, bl, _ = split_outputs(
                torch.as_tensor(logits), prepared.n_disc, prepared.n_rec, prepared.gep
            )
            b = targets[:, 0].astype(np.int64)
            known = (b >= 0) & (b < prepared.n_disc)
            if known.any():
                out["batch_accuracy"] = float((bl.numpy().argmax(1)[known] == b[known]).mean())
        return out

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        *,
        logits: np.ndarray,
        targets: np.ndarray,
        embeddings: np.ndarray | None,
        prepared: BatchState,
        config: Any,
        out_dir: Path | None,
    ) -> dict[str, Any]:
        from sctune.core.preprocess import metric_sample
        from sctune.tasks.batch_correction import metrics

        start = time.perf_counter()
        n_test = len(targets)
        some = metric_sample(n_test, config.embedding_metric_cells)  # every metric is pairwise
        if some is not None:
            targets = targets[some]
            embeddings = None if embeddings is None else embeddings[some]
        b = targets[:, 0].astype(np.int64)
        names = np.array(prepared.batches + ["unknown"], dtype=object)
        batch = names[np.where(b >= 0, b, len(prepared.batches))]
        li = targets[:, 1].astype(np.int64)
        labels = None
        if len(prepared.labels) >= 2 and (li >= 0).all() and len(set(li.tolist())) >= 2:
            labels = np.array(prepared.labels, dtype=object)[li]
        embs: dict[str, np.ndarray] = {}
        if embeddings is not None:
            embs["sctune"] = np.asarray(embeddings, dtype=np.float32)
        notes: list[str] = []
        pre = None
        if targets.shape[1] > 2 and len(targets) > 2:
            pre = metrics.pca(targets[:, 2:], config.n_pcs)
            if "pca" in config.references:
                embs["pca"] = pre
            if "harmony" in config.references:
                embs["harmony"] = metrics.harmony(pre, batch)
        elif config.references:
            notes.append(NO_EXPRESSION)
        if some is not None:
            notes.append(
                f"scored on a fixed random {len(some):,} of the {n_test:,} test cells "
                "(task.embedding_metric_cells)"
            )
        result: dict[str, Any] = {
            "n_cells": len(targets),
            "n_batches": len(set(batch.tolist())),
            "labels": labels is not None,
        }
        for name, X in embs.items():
            result[name] = metrics.scib_scores(X, batch, labels, pre, kbet=config.kbet)
        result["metric_seconds"] = round(time.perf_counter() - start, 2)
        if notes:
            result["notes"] = notes
        if out_dir is not None and config.umap and embs and len(targets) > 3:
            from sctune.tasks.batch_correction import plots

            plots.umap_grid(embs, batch, labels, out_dir / "umap_integration.png")
        return result

    def sampling_groups(
        self, targets: np.ndarray, prepared: BatchState, config: Any
    ) -> np.ndarray | None:
        """The cell's batch, when ``per_batch_sampling`` is on."""
        return targets[:, 0].astype(np.int64) if config.per_batch_sampling else None

    def reference_embeddings(
        self, targets: np.ndarray, prepared: BatchState, config: Any
    ) -> dict[str, np.ndarray]:
        """``X_pca`` (uncorrected PCA of the log-normalised training HVGs) and ``X_harmony``
        (Harmony on it, by batch) for every cell, as configured in ``references``."""
        from sctune.tasks.batch_correction import metrics

        if targets.shape[1] <= 2 or len(targets) < 3 or not config.references:
            return {}
        pre = metrics.pca(targets[:, 2:], config.n_pcs)
        out = {"X_pca": pre} if "pca" in config.references else {}
        if "harmony" in config.references:
            b = targets[:, 0].astype(np.int64)
            names = np.array(prepared.batches + ["unknown"], dtype=object)
            out["X_harmony"] = metrics.harmony(pre, names[np.where(b >= 0, b, len(names) - 1)])
        return out

    def annotate(self, logits: np.ndarray, prepared: BatchState) -> dict[str, np.ndarray]:
        """The discriminator's guess of each cell's batch: how identifiable it still is."""
        if not prepared.n_disc:
            return {"sctune_embedded": np.ones(len(logits), dtype=bool)}
        import torch

        from sctune.tasks.batch_correction.head import split_outputs

        _, bl, _ = split_outputs(
            torch.as_tensor(logits), prepared.n_disc, prepared.n_rec, prepared.gep
        )
        z = bl.numpy().astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        idx = p.argmax(axis=1)
        return {
            "sctune_batch_guess": np.array(prepared.batches, dtype=object)[idx].astype(str),
            "sctune_batch_guess_confidence": p[np.arange(len(idx)), idx].astype(np.float32),
        }

    def summary(self, metrics: dict[str, Any]) -> str:
        def fmt(v: Any) -> str:
            return "  -  " if v is None else f"{v:.3f}"

        parts = [
            f"{name} total {fmt(m.get('total'))} bio {fmt(m.get('bio'))} batch {fmt(m.get('batch'))}"
            for name, m in metrics.items()
            if isinstance(m, dict)
        ]
        return " | ".join(parts) or "no embedding scored"

    def describe(self, prepared: BatchState) -> str:
        terms = [
            t
            for t, on in (
                ("GEP", prepared.gep),
                ("GEPC", prepared.n_rec),
                ("DAR", prepared.n_disc),
            )
            if on
        ]
        return (
            f"{prepared.n_train_batches} training batches, {len(prepared.hvg)} HVGs, "
            f"head terms: {', '.join(terms) or 'none'} (+ ECS if on)"
        )

    def state(self, prepared: BatchState) -> dict[str, Any]:
        return {
            "batch_column": prepared.batch_column,
            "batches": prepared.batches,
            "n_train_batches": prepared.n_train_batches,
            "labels": prepared.labels,
            "hvg": prepared.hvg,
            "dar": prepared.dar,
            "gepc": prepared.gepc,
            "gep": prepared.gep,
        }

    def from_state(self, state: dict[str, Any]) -> BatchState:
        return BatchState(
            state["batch_column"],
            list(state["batches"]),
            int(state["n_train_batches"]),
            list(state["labels"]),
            list(state["hvg"]),
            bool(state["dar"]),
            bool(state["gepc"]),
            bool(state.get("gep", False)),
        )


@hookimpl
def sctune_register_tasks() -> list[type[Task]]:
    return [BatchCorrectionTask]
