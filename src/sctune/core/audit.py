"""Gradient audit: every trainable tensor gets a gradient, no frozen tensor does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sctune.core.errors import SctuneError


class AuditError(SctuneError):
    """A trainable tensor got no gradient, or a frozen one got one (a silent-training bug)."""


@dataclass
class GradientAudit:
    rows: list[dict[str, Any]] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    zero: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.dead and not self.leaked

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dead": self.dead,
            "leaked": self.leaked,
            "zero_at_first_step": self.zero,
            "tensors": self.rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradientAudit:
        """Inverse of :meth:`as_dict`."""
        return cls(
            rows=list(d["tensors"]),
            dead=list(d["dead"]),
            leaked=list(d["leaked"]),
            zero=list(d["zero_at_first_step"]),
        )

    def raise_if_bad(self) -> None:
        if not self.ok:
            parts = []
            if self.dead:
                parts.append(
                    f"{len(self.dead)} trainable tensor(s) got no gradient: "
                    + ", ".join(self.dead[:6])
                )
            if self.leaked:
                parts.append(
                    f"{len(self.leaked)} frozen tensor(s) got a gradient: "
                    + ", ".join(self.leaked[:6])
                )
            raise AuditError(
                "gradient audit failed at the first training step\n  " + "\n  ".join(parts),
                hint="an adapter is attached where the forward pass never reaches it; see gradient_audit.json",
            )


def audit_gradients(model: nn.Module) -> GradientAudit:
    """Inspect ``.grad`` after one backward pass (before the optimizer step)."""
    audit = GradientAudit()
    for name, p in model.named_parameters():
        if p.requires_grad:
            norm = None if p.grad is None else float(p.grad.detach().float().norm())
            audit.rows.append(
                {"name": name, "shape": list(p.shape), "numel": p.numel(), "grad_norm": norm}
            )
            if norm is None:
                audit.dead.append(name)
            elif norm == 0.0:
                audit.zero.append(name)
        elif p.grad is not None:
            audit.leaked.append(name)
    return audit
