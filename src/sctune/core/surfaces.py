"""Insertion points: the few places where an adapter may act on a backbone.

A backbone declares which of these it provides (``Backbone.provides``) and returns the concrete
objects from ``Backbone.surfaces(module)``; an adapter declares what it requires
(``Adapter.requires``) and acts only through these objects. No adapter knows which backbone it is
on, and no backbone contains adapter code.

The slots are ``nn.Module`` containers that live inside the backbone module and are identity until
an adapter attaches something, so adapter tensors appear in ``module.named_parameters()`` under
stable names (e.g. ``blocks.0.attention_slot.adapters.0.down.weight``).

Conventions: hidden states are ``(batch, length, hidden)``; ``padding_mask`` is boolean with
``True`` = padding (ignored by attention).

Helpers for adapter authors (public; the built-in adapters use them too):

- :func:`placement`: the device and dtype new adapter tensors should take;
- :func:`group_projections`: the projection sites a set of targets names on the chosen blocks,
  grouped by the ``nn.Linear`` they live in, with each target's output rows (scGPT packs Q, K and
  V into one ``Wqkv``: ``q``/``k``/``v`` are row slices of one linear);
- :func:`wrap_rows` and :class:`RowTransformLinear`: install ``nn.Module`` transforms on chosen
  output row slices of such a linear (an IA3-style scaling of the K and V rows, say);
- :func:`sctune.core.adapter.select_layers` resolves a ``layers`` option (torch-free, so it lives
  with the adapter contract).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sctune.core.capabilities import Capability
from sctune.core.errors import CompatibilityError, quoted


class TransformSlot(nn.Module):
    """``x -> f_n(...f_1(x))``; identity while empty. Adapters append to :attr:`adapters`."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            x = adapter(x)
        return x


class ParallelSlot(nn.Module):
    """Branches fed with one input whose outputs are summed onto another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList()

    def add_to(self, out: torch.Tensor, branch_input: torch.Tensor) -> torch.Tensor:
        """Return ``out + sum(branch(branch_input))`` (``out`` itself while empty)."""
        for branch in self.branches:
            out = out + branch(branch_input)
        return out


class PromptSlot(nn.Module):
    """Holds the prompt tokens ``(T, hidden)`` of one block, or ``None``.

    Backbones call :func:`prompt_step` before each block and :func:`strip_prompts` after the last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prompts: nn.Parameter | None = None

    def set(self, prompts: nn.Parameter) -> None:
        if prompts.dim() != 2:
            raise ValueError(f"prompts must be (tokens, hidden), got {tuple(prompts.shape)}")
        self.prompts = prompts


@dataclass
class PromptState:
    """Where prompts go (``insert_at``: index after any leading special token) and how many."""

    insert_at: int
    count: int = 0


def prompt_step(
    slot: PromptSlot | None,
    hidden: torch.Tensor,
    padding_mask: torch.Tensor,
    state: PromptState,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert (first prompted block) or replace (later prompted blocks) the prompt positions.

    The first prompted block inserts ``T`` positions at ``state.insert_at`` and extends the mask
    with ``False`` (attend); later prompted blocks overwrite those positions with their own
    prompts; blocks without prompts carry them along unchanged.
    """
    if slot is None or slot.prompts is None:
        return hidden, padding_mask
    prompts = slot.prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    n, at = prompts.shape[1], state.insert_at
    if state.count == 0:
        hidden = torch.cat([hidden[:, :at], prompts, hidden[:, at:]], dim=1)
        extra = torch.zeros(hidden.shape[0], n, dtype=torch.bool, device=padding_mask.device)
        padding_mask = torch.cat([padding_mask[:, :at], extra, padding_mask[:, at:]], dim=1)
        state.count = n
    elif n != state.count:
        raise ValueError(f"prompt blocks disagree on the token count: {n} vs {state.count}")
    else:
        hidden = torch.cat([hidden[:, :at], prompts, hidden[:, at + n :]], dim=1)
    return hidden, padding_mask


def strip_prompts(
    hidden: torch.Tensor, padding_mask: torch.Tensor, state: PromptState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the prompt positions so pooling and decoders see the original positions."""
    if state.count == 0:
        return hidden, padding_mask
    at, n = state.insert_at, state.count
    keep = torch.cat([hidden[:, :at], hidden[:, at + n :]], dim=1)
    mask = torch.cat([padding_mask[:, :at], padding_mask[:, at + n :]], dim=1)
    return keep, mask


@dataclass(frozen=True)
class ProjectionSite:
    """A projection an adapter may wrap: ``getattr(owner, attr)`` is an ``nn.Linear``.

    ``rows`` selects this projection's output rows when several share one packed linear (scGPT's
    Q/K/V in one ``Wqkv``); ``None`` means the whole linear. The backbone must call the module
    (``owner.attr(x)``), never read its ``.weight`` directly, so a wrapper placed with
    ``setattr(owner, attr, wrapper)`` is always executed.
    """

    owner: nn.Module
    attr: str
    rows: slice | None = None

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)


PROJECTION_NAMES = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class BlockSurfaces:
    """The insertion points of one encoder block (``None``: not provided)."""

    attention_output: TransformSlot | None = None
    ffn_parallel: ParallelSlot | None = None
    projections: Mapping[str, ProjectionSite] = field(default_factory=dict)
    prompt: PromptSlot | None = None


@dataclass(frozen=True)
class Surfaces:
    """Everything an adapter may touch on one built backbone module.

    ``hidden_size`` is the width of the token stream the slots see (what adapters size their
    tensors by); it may differ from the module's ``hidden_size``, the cell-embedding width the
    head reads (scBERT's convolutional stem). ``notes`` maps a capability to a sentence saying
    where it sits on this backbone (shown by ``sctune plugins`` and in run reports).

    ``token_stream`` (capability ``token_stream``) sees the summed token embeddings right before
    the first block, after every embedding is added and before any prompt tokens are inserted;
    where the backbone has a single embedding it sees the same tensor as ``input_embedding``
    (after that slot). It comes last and defaults to ``None`` (not provided), so backbones written
    before it existed keep working unchanged.
    """

    hidden_size: int
    input_embedding: TransformSlot | None
    blocks: tuple[BlockSurfaces, ...]
    notes: Mapping[str, str] = field(default_factory=dict)
    token_stream: TransformSlot | None = None

    def provides(self) -> frozenset[Capability]:
        caps: set[Capability] = set()
        if self.input_embedding is not None:
            caps.add(Capability.INPUT_EMBEDDING)
        if self.token_stream is not None:
            caps.add(Capability.TOKEN_STREAM)
        if self.blocks and all(b.attention_output is not None for b in self.blocks):
            caps.add(Capability.ATTENTION_OUTPUT)
        if self.blocks and all(b.ffn_parallel is not None for b in self.blocks):
            caps.add(Capability.FFN_PARALLEL)
        if self.blocks and all(b.projections for b in self.blocks):
            caps.add(Capability.PROJECTIONS)
        if self.blocks and all(b.prompt is not None for b in self.blocks):
            caps.add(Capability.PROMPT_TOKENS)
        return frozenset(caps)


# --------------------------------------------------------------------------- adapter helpers


def placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a backbone's parameters: create new adapter tensors with them
    (``torch.zeros(..., device=device, dtype=dtype)`` or ``layer.to(device=device, dtype=dtype)``).

    CPU and the default dtype when the module has no floating-point parameter.
    """
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@dataclass(frozen=True)
class ProjectionGroup:
    """The chosen projection sites that live in one linear, ``getattr(owner, attr)``.

    Attributes
    ----------
    block
        Index of the (first) block the linear belongs to.
    owner, attr
        Where the linear sits; :meth:`install` replaces it there.
    rows
        ``{target: (start, stop)}``: the output rows each chosen target occupies, half-open,
        ascending and non-overlapping. A projection that is a whole linear spans
        ``(0, out_features)``; scGPT's packed ``Wqkv`` gives ``q`` ``(0, d)``, ``k`` ``(d, 2d)``
        and ``v`` ``(2d, 3d)``.
    """

    block: int
    owner: nn.Module
    attr: str
    rows: Mapping[str, tuple[int, int]]

    @property
    def module(self) -> nn.Module:
        """The module now at the site (the ``nn.Linear``, or a wrapper an adapter put there)."""
        return getattr(self.owner, self.attr)

    def slices(self) -> dict[str, slice]:
        """``rows`` as ``{target: slice(start, stop)}``."""
        return {t: slice(a, b) for t, (a, b) in self.rows.items()}

    def install(self, wrapper: nn.Module) -> None:
        """Put ``wrapper`` at the site (``setattr(owner, attr, wrapper)``); the backbone calls it."""
        setattr(self.owner, self.attr, wrapper)


def group_projections(
    surfaces: Surfaces,
    targets: Iterable[str],
    *,
    layers: Sequence[int],
    adapter: str,
    key: str = "adapter.targets",
) -> list[ProjectionGroup]:
    """The projection sites ``targets`` name on ``layers``, one group per underlying linear.

    Targets that are row slices of one packed linear (scGPT's ``q``/``k``/``v`` in ``Wqkv``) land
    in one group with their row ranges, so an adapter wraps that linear once; targets that are
    separate linears (Geneformer's ``query``/``key``/``value``) get a group each. Groups come in
    block order, then in the order of ``targets``.

    Parameters
    ----------
    surfaces
        The backbone's surfaces, as passed to :meth:`Adapter.apply`.
    targets
        Projection names (:data:`PROJECTION_NAMES`: ``q``, ``k``, ``v``, ``o``, ``ffn_in``,
        ``ffn_out``).
    layers
        Block indices, e.g. from :func:`sctune.core.adapter.select_layers`.
    adapter, key
        The adapter's name and the recipe key of its targets option, shown in errors.

    Raises
    ------
    CompatibilityError
        When a target is not provided on a block, when a site holds a module without
        ``out_features``, or when two targets' rows overlap.
    """
    targets = list(targets)
    found: dict[tuple[int, str], tuple[int, ProjectionSite, dict[str, slice | None]]] = {}
    for i in layers:
        sites = surfaces.blocks[i].projections
        for target in targets:
            site = sites.get(target)
            if site is None:
                raise CompatibilityError(
                    f"{key}: {adapter} target '{target}' is not provided on block {i} of this "
                    f"backbone; available: {quoted(sites)}",
                    hint="choose targets among the available projections",
                )
            entry = found.setdefault((id(site.owner), site.attr), (i, site, {}))
            entry[2][target] = site.rows
    groups = []
    for i, site, slices in found.values():
        width = getattr(site.module, "out_features", None)
        if not isinstance(width, int):
            raise CompatibilityError(
                f"adapter '{adapter}': projection '{site.attr}' on block {i} is a "
                f"{type(site.module).__name__} without 'out_features'; the backbone's surfaces "
                f"must expose nn.Linear projections"
            )
        rows = {}
        for target, sl in slices.items():
            start, stop, step = (sl or slice(None)).indices(width)
            if step != 1 or stop <= start:
                raise CompatibilityError(
                    f"adapter '{adapter}': projection '{target}' on block {i} has rows {sl}, "
                    f"not a contiguous slice of the {width} outputs of '{site.attr}'"
                )
            rows[target] = (start, stop)
        spans = sorted(rows.values())
        for (_, stop), (start, _) in zip(spans, spans[1:]):
            if start < stop:
                raise CompatibilityError(
                    f"adapter '{adapter}': projections {quoted(slices)} on block {i} overlap in "
                    f"'{site.attr}' (rows {rows})"
                )
        groups.append(ProjectionGroup(i, site.owner, site.attr, rows))
    return groups


class RowTransformLinear(nn.Module):
    """A projection whose chosen output row slices pass through transforms.

    ``y = base(x)``, then ``y[..., start:stop] = f(y[..., start:stop])`` for each transform ``f``
    in the order added. Wrapping an ``nn.Linear`` takes over its ``weight`` and ``bias``
    Parameters (backbone state-dict keys stay ``...Wqkv.weight``); any other module with
    ``out_features`` (another adapter's wrapper) is kept as :attr:`inner` and called. Transforms
    are registered under :attr:`transforms` by name (``...Wqkv.transforms.ia3_k.scale``).

    Use :func:`wrap_rows` rather than building it directly.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.inner: nn.Module | None
        if isinstance(base, nn.Linear):
            self.weight = base.weight
            self.bias = base.bias
            self.inner = None
            self.in_features = base.in_features
        else:
            self.inner = base
            self.in_features = int(getattr(base, "in_features", -1))
        self.out_features = int(getattr(base, "out_features"))  # noqa: B009
        self.transforms = nn.ModuleDict()
        self.rows: dict[str, tuple[int, int]] = {}

    def add(self, name: str, rows: tuple[int, int], transform: nn.Module) -> None:
        """Apply ``transform`` to output rows ``rows = (start, stop)``, after those added before."""
        if name in self.transforms:
            raise CompatibilityError(
                f"a row transform named '{name}' is already installed on this projection; "
                f"apply each adapter once per model"
            )
        start, stop = rows
        if not 0 <= start < stop <= self.out_features:
            raise ValueError(f"rows {rows} are outside 0..{self.out_features}")
        self.transforms[name] = transform
        self.rows[name] = (start, stop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias) if self.inner is None else self.inner(x)
        for name, transform in self.transforms.items():
            start, stop = self.rows[name]
            y = torch.cat([y[..., :start], transform(y[..., start:stop]), y[..., stop:]], dim=-1)
        return y

    def extra_repr(self) -> str:
        rows = ", ".join(f"{n}={a}:{b}" for n, (a, b) in self.rows.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, rows=[{rows}]"


def wrap_rows(
    group: ProjectionGroup, transforms: Mapping[str, nn.Module], *, name: str
) -> RowTransformLinear:
    """Install ``transforms[target]`` on the output rows of each target of ``group``.

    The site's linear is replaced by a :class:`RowTransformLinear` (or an existing one is reused,
    so several adapters stack on one projection); each transform maps a ``(..., stop - start)``
    tensor to the same shape and is registered as ``transforms.<name>_<target>``. The new
    transforms' parameters are the caller's to list in its :class:`AdapterHandle`; move them to
    :func:`placement` first.

    Example: an IA3-style learned scaling of the K and V rows::

        layers = select_layers(config.layers, len(surfaces.blocks), adapter=self.name)
        for group in group_projections(surfaces, ["k", "v"], layers=layers, adapter=self.name):
            scales = {t: Scale(b - a) for t, (a, b) in group.rows.items()}
            wrap_rows(group, scales, name=self.name)
    """
    unknown = set(transforms) - set(group.rows)
    if unknown:
        raise ValueError(
            f"no rows for target(s) {sorted(unknown)}; the group has {list(group.rows)}"
        )
    wrapper = group.module
    if not isinstance(wrapper, RowTransformLinear):
        wrapper = RowTransformLinear(wrapper)
        group.install(wrapper)
    for target, transform in transforms.items():
        wrapper.add(f"{name}_{target}", group.rows[target], transform)
    return wrapper
