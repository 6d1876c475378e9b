"""Contract checks for plugin authors; public as ``sctune.testing.check_backbone`` and friends.

Each check builds a tiny instance of the component, exercises every method the engine calls,
collects every broken promise and raises one :class:`PluginCheckError` listing them all. The
checks run on CPU in seconds; torch is imported only when a check runs.
"""

from __future__ import annotations

import inspect
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sctune.core.adapter import Adapter
    from sctune.core.backbone import Backbone
    from sctune.core.config import PluginConfig
    from sctune.core.registry import Registry
    from sctune.core.task import Task

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


class PluginCheckError(AssertionError):
    """A component breaks the plugin contract; :attr:`failures` lists every problem found."""

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = list(failures)
        n = len(self.failures)
        super().__init__(
            f"plugin contract check failed ({n} problem{'s' * (n != 1)})\n  - "
            + "\n  - ".join(self.failures)
        )


class _Stop(Exception):
    """A prerequisite failed; the checks that depend on it are skipped."""


class _Report:
    def __init__(self, what: str) -> None:
        self.what = what
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.what}: {message}")

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.fail(message)
        return ok

    @contextmanager
    def step(self, label: str, *, required: bool = False) -> Iterator[None]:
        """Record an exception raised inside as a failure of ``label``; ``required`` stops the
        dependent checks (the caller catches :class:`_Stop`)."""
        try:
            yield
        except _Stop:
            raise
        except Exception as exc:
            self.fail(f"{label} raised {type(exc).__name__}: {exc}")
            if required:
                raise _Stop from exc


def _finish(reports: Iterable[_Report]) -> None:
    failures = [f for r in reports for f in r.failures]
    if failures:
        raise PluginCheckError(failures)


@contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="sctune-check-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- class attributes


def _check_class(cls: Any, base: type, kind: str, r: _Report) -> bool:
    """Attributes every component has: name, description, config_cls with documented fields."""
    from pydantic import BaseModel

    from sctune.core.config import PluginConfig

    if not (isinstance(cls, type) and issubclass(cls, base)):
        r.fail(f"is not a subclass of sctune.core.{kind}.{base.__name__}")
        return False
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        r.fail(f"abstract methods are not implemented: {', '.join(missing)}")
    name = getattr(cls, "name", None)
    r.expect(
        isinstance(name, str) and NAME.fullmatch(name) is not None,
        f"'name' must be a string of letters, digits, '_' or '-' (got {name!r})",
    )
    desc = getattr(cls, "description", None)
    r.expect(
        isinstance(desc, str) and bool(desc.strip()),
        "'description' must be a non-empty string ('sctune plugins' shows it)",
    )
    config_cls = getattr(cls, "config_cls", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, BaseModel)):
        r.fail(f"'config_cls' must be a PluginConfig subclass (got {config_cls!r})")
        return False
    if not issubclass(config_cls, PluginConfig):
        r.fail(f"'config_cls' {config_cls.__name__} must subclass sctune.core.config.PluginConfig")
    conf = config_cls.model_config
    r.expect(
        conf.get("extra") == "forbid" and conf.get("frozen") is True,
        f"'config_cls' {config_cls.__name__} must keep extra='forbid' and frozen=True "
        "(PluginConfig's model_config): unknown recipe keys are errors, options are immutable",
    )
    undocumented = [n for n, f in config_cls.model_fields.items() if not f.description]
    r.expect(
        not undocumented,
        f"options without Field(description=...): {', '.join(undocumented)} "
        "('sctune plugins --options' prints the descriptions)",
    )
    return True


def _config(cls: Any, options: Mapping[str, Any] | None, r: _Report) -> PluginConfig:
    with r.step(f"{cls.config_cls.__name__}(**{dict(options or {})!r})", required=True):
        config: PluginConfig = cls.config_cls(**dict(options or {}))
        return config
    raise AssertionError("unreachable")  # pragma: no cover


def _capabilities(value: Any) -> bool:
    from sctune.core.capabilities import Capability

    return isinstance(value, frozenset) and all(isinstance(c, Capability) for c in value)


# --------------------------------------------------------------------------- backbones


def check_backbone(cls: type[Backbone], *, workdir: Path | None = None, n_cells: int = 6) -> None:
    """Check a backbone class against the contract, on its ``example_config`` instance.

    Verifies the class attributes (``name``, ``description``, ``licence``, ``provides`` a frozenset
    of capabilities, ``config_cls`` a PluginConfig whose options all have descriptions), then:
    ``example_config`` validates; ``resolve`` takes ``genes``, ``run_dir`` and ``expression`` and
    returns a config; ``gene_match`` matches the tiny data's genes; ``tokenize`` gives one entry
    per cell; the built module has an ``int`` ``hidden_size`` and its eval-mode ``forward``
    returns a deterministic :class:`~sctune.core.cells.EncoderOutput` of that width; ``surfaces``
    provides every declared capability, its slots and projections live inside the module, and
    each one is really on the forward path (attaching something changes the output).

    Raises
    ------
    PluginCheckError
        Listing every problem found.
    """
    from sctune.core.backbone import Backbone

    r = _Report(f"backbone '{getattr(cls, 'name', cls)}'")
    try:
        if _check_class(cls, Backbone, "backbone", r):
            r.expect(isinstance(getattr(cls, "licence", None), str), "'licence' must be a string")
            r.expect(
                _capabilities(getattr(cls, "provides", None)),
                "'provides' must be a frozenset of sctune.core.capabilities.Capability",
            )
            free = getattr(cls, "parameter_free_options", {})
            unknown = [k for k in free if k not in cls.config_cls.model_fields]
            r.expect(not unknown, f"'parameter_free_options' names unknown options {unknown}")
            params = inspect.signature(cls.resolve).parameters
            missing = [k for k in ("genes", "run_dir", "expression") if k not in params]
            r.expect(
                not missing,
                f"resolve() must take the keywords genes, run_dir and expression (missing: "
                f"{', '.join(missing)}); see sctune.core.backbone.Backbone.resolve",
            )
            with _workdir(workdir) as tmp:
                _check_backbone_instance(cls, tmp, n_cells, r)
    except _Stop:
        pass
    _finish([r])


def _check_backbone_instance(cls: type[Backbone], tmp: Path, n_cells: int, r: _Report) -> None:
    import torch

    from sctune import testing
    from sctune.core.cells import EncoderOutput, GeneMatch, TokenizedCells

    expr = testing.tiny_expression(n_cells)
    genes = list(expr.genes)
    plugin = cls()
    try:
        options = cls.example_config(tmp, genes)
    except NotImplementedError:
        r.fail(
            "example_config() is not implemented: the test matrix and these checks need a tiny, "
            "randomly initialised CPU instance"
        )
        raise _Stop from None
    r.expect(isinstance(options, Mapping), "example_config() must return a dict of options")
    r.expect("name" not in options, "example_config() must not include 'name'")
    config = _config(cls, {k: v for k, v in options.items() if k != "name"}, r)
    with r.step("resolve(config, genes=..., run_dir=..., expression=...)", required=True):
        config = plugin.resolve(config, genes=genes, run_dir=tmp / "run", expression=expr)
    r.expect(isinstance(config, cls.config_cls), "resolve() must return a config_cls instance")
    with r.step("check(config)"):
        problems = plugin.check(config)
        r.expect(
            isinstance(problems, list) and not problems,
            f"check() of the example config reports problems: {problems}",
        )
    with r.step("fingerprint(config)"):
        fp = plugin.fingerprint(config)
        r.expect(
            isinstance(fp, dict) and all(isinstance(v, str) for v in fp.values()),
            "fingerprint() must return dict[str, str]",
        )
    with r.step("randomly_initialised(config)"):
        r.expect(
            isinstance(plugin.randomly_initialised(config), bool),
            "randomly_initialised() must return a bool",
        )
    with r.step("gene_match(genes, config)"):
        gm = plugin.gene_match(genes, config)
        if r.expect(isinstance(gm, GeneMatch), "gene_match() must return a GeneMatch"):
            r.expect(gm.n_matched > 0, "gene_match() matched none of the example's own genes")
    with r.step("tokenize(expression, config, seed=0)", required=True):
        tokens = plugin.tokenize(expr, config, seed=0)
    if not r.expect(isinstance(tokens, TokenizedCells), "tokenize() must return TokenizedCells"):
        raise _Stop
    r.expect(len(tokens) == expr.n_cells, f"tokenize() gave {len(tokens)} cells for {n_cells}")
    with r.step("TokenizedCells.collate", required=True):
        batch = tokens.collate([tokens[i] for i in range(len(tokens))])
    with r.step("build(config)", required=True):
        module = plugin.build(config)
    hidden = getattr(module, "hidden_size", None)
    if not r.expect(
        isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0,
        f"the built module needs an int attribute 'hidden_size' (got {hidden!r})",
    ):
        raise _Stop
    for name in getattr(module, "fresh_modules", ()):
        with r.step(f"fresh_modules entry '{name}'"):
            module.get_submodule(name)
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    with r.step("forward(batch)", required=True), torch.no_grad():
        out = module(batch)
        again = module(batch)
    if not r.expect(isinstance(out, EncoderOutput), "forward() must return an EncoderOutput"):
        raise _Stop
    n = expr.n_cells
    r.expect(
        tuple(out.cell.shape) == (n, hidden),
        f"EncoderOutput.cell has shape {tuple(out.cell.shape)}, expected ({n}, {hidden}) "
        "(cells, hidden_size)",
    )
    r.expect(bool(torch.isfinite(out.cell).all()), "EncoderOutput.cell has NaN or inf")
    r.expect(torch.equal(out.cell, again.cell), "eval-mode forward is not deterministic")
    with r.step("surfaces(module)", required=True):
        surfaces = plugin.surfaces(module)
    if out.tokens is not None:
        width = getattr(surfaces, "hidden_size", None)
        ok = out.tokens.dim() == 3 and out.tokens.shape[0] == n and out.tokens.shape[2] == width
        r.expect(
            ok,
            f"EncoderOutput.tokens has shape {tuple(out.tokens.shape)}, expected ({n}, length, "
            f"{width}) (cells, positions, Surfaces.hidden_size)",
        )
        if out.padding_mask is not None:
            r.expect(
                tuple(out.padding_mask.shape) == tuple(out.tokens.shape[:2]),
                "EncoderOutput.padding_mask does not align with tokens",
            )
    _check_surfaces(cls, module, surfaces, batch, out.cell, r)
    _check_masked_modelling(cls, plugin, module, config, batch, r)


def _check_masked_modelling(
    cls: type[Backbone],
    plugin: Backbone,
    module: nn.Module,
    config: Any,
    batch: dict[str, torch.Tensor],
    r: _Report,
) -> None:
    """A backbone that declares MASKED_MODELLING returns a working objective: masking changes
    only the chosen tokens (never in place), decoding fits the per-token outputs, and the
    per-cell loss is finite and has a gradient."""
    import torch

    from sctune.core.capabilities import Capability
    from sctune.core.objective import MaskedModelling

    declared = Capability.MASKED_MODELLING in cls.provides
    with r.step("masked_modelling(module, config)", required=False):
        objective = plugin.masked_modelling(module, config)
    if not declared:
        return
    if not r.expect(
        isinstance(objective, MaskedModelling),
        "'provides' declares masked_modelling, but masked_modelling() does not return a "
        "sctune.core.objective.MaskedModelling",
    ):
        return
    assert objective is not None
    with r.step("MaskedModelling.mask/decode/per_cell"):
        before = {k: v.clone() for k, v in batch.items()}
        masked = objective.mask(batch, objective.default_ratio, torch.Generator().manual_seed(0))
        r.expect(
            all(torch.equal(before[k], batch[k]) for k in batch),
            "mask() modified the batch in place",
        )
        r.expect(bool(masked.positions.any()), "mask() masked no token of the example cells")
        out = module(masked.batch)
        r.expect(
            out.tokens is not None
            and tuple(masked.positions.shape) == tuple(out.tokens.shape[:2]),
            "Masked.positions must align with EncoderOutput.tokens (cells, positions)",
        )
        if out.tokens is not None:
            loss, count, correct = objective.per_cell(objective.decode(out.tokens), masked)
            r.expect(bool(torch.isfinite(loss).all()), "the masked loss is not finite")
            r.expect(
                float(count.sum()) == float(masked.positions.sum()),
                "per_cell() counts differ from the masked positions",
            )
            fast = objective.score(out.tokens, masked)  # what heads call: masked positions only
            r.expect(
                all(
                    torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
                    for a, b in zip(fast, (loss, count, correct))
                ),
                "score() (decoding the masked positions only) differs from "
                "per_cell(decode(tokens)): decode() must act on each position independently",
            )
            loss.sum().backward()
            grads = [p.grad for p in objective.parameters()]
            r.expect(
                any(g is not None and bool(g.abs().sum() > 0) for g in grads),
                "the masked loss gives the decoder no gradient",
            )


def _check_surfaces(
    cls: type[Backbone],
    module: nn.Module,
    surfaces: Any,
    batch: dict[str, torch.Tensor],
    reference: torch.Tensor,
    r: _Report,
) -> None:
    import torch
    from torch import nn

    from sctune.core.capabilities import INSERTION_POINTS, Capability
    from sctune.core.surfaces import Surfaces

    if not r.expect(isinstance(surfaces, Surfaces), "surfaces() must return a Surfaces"):
        return
    r.expect(
        isinstance(surfaces.hidden_size, int) and surfaces.hidden_size > 0,
        f"Surfaces.hidden_size must be a positive int (got {surfaces.hidden_size!r})",
    )
    missing = (set(cls.provides) & INSERTION_POINTS) - set(surfaces.provides())
    r.expect(
        not missing,
        f"'provides' declares {', '.join(sorted(map(str, missing)))}, but surfaces() does not "
        "give it (on every block)",
    )
    inside = {id(m) for m in module.modules()}

    def changes(label: str, attach: Callable[[], Callable[[], None]]) -> None:
        with r.step(f"attaching to {label}"):
            detach = attach()
            try:
                with torch.no_grad():
                    out = module(batch).cell
            finally:
                detach()
            r.expect(
                tuple(out.shape) == tuple(reference.shape) and not torch.equal(out, reference),
                f"{label} is not on the forward path (attaching a transform there changes "
                "nothing)",
            )

    for label, slot in (
        ("input_embedding", surfaces.input_embedding),
        ("token_stream", surfaces.token_stream),
    ):
        if slot is not None and r.expect(id(slot) in inside, f"{label} slot is not a submodule"):
            changes(label, partial(_push, slot.adapters, _shift()))
    for i, block in enumerate(surfaces.blocks):
        att, ffn, prompt = block.attention_output, block.ffn_parallel, block.prompt
        for label, s in (("attention_output", att), ("ffn_parallel", ffn), ("prompt", prompt)):
            if s is not None:
                r.expect(id(s) in inside, f"block {i} {label} slot is not a submodule")
        if att is not None:
            changes(f"block {i} attention_output", partial(_push, att.adapters, _shift()))
        if ffn is not None:
            changes(f"block {i} ffn_parallel", partial(_push, ffn.branches, _shift()))
        if prompt is not None:
            changes(f"block {i} prompt", partial(_prompt, prompt, surfaces.hidden_size))
        for target, site in block.projections.items():
            linear = site.module
            if not r.expect(
                isinstance(linear, nn.Linear),
                f"block {i} projection '{target}' is a {type(linear).__name__}, not nn.Linear",
            ):
                continue
            r.expect(id(site.owner) in inside, f"block {i} projection '{target}' owner is outside")
            if site.rows is not None:
                start, stop, step = site.rows.indices(linear.out_features)
                r.expect(
                    step == 1 and 0 <= start < stop <= linear.out_features,
                    f"block {i} projection '{target}' rows {site.rows} are not a contiguous "
                    f"slice of {linear.out_features} outputs",
                )
            changes(f"block {i} projection '{target}'", partial(_scale_site, site))
    if Capability.PROMPT_TOKENS in cls.provides and surfaces.blocks:
        _check_prompt_shapes(module, surfaces, batch, r)


def _push(container: Any, item: Any) -> Callable[[], None]:
    container.append(item)
    return lambda: container.__delitem__(len(container) - 1)


def _shift() -> nn.Module:
    """A transform that moves its input (``x + 0.5``); the output must change with it."""
    from torch import nn

    class Shift(nn.Module):
        def forward(self, x: Any) -> Any:
            return x + 0.5

    return Shift()


def _prompt(slot: Any, hidden: int) -> Callable[[], None]:
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    old = slot.prompts
    slot.set(nn.Parameter(torch.randn(2, hidden, generator=generator)))

    def undo() -> None:
        slot.prompts = old

    return undo


def _scale_site(site: Any) -> Callable[[], None]:
    from torch import nn

    linear = site.module

    class Scaled(nn.Module):
        def forward(self, x: Any) -> Any:
            return linear(x) * 0.5

    setattr(site.owner, site.attr, Scaled())
    return lambda: setattr(site.owner, site.attr, linear)


def _check_prompt_shapes(module: Any, surfaces: Any, batch: Any, r: _Report) -> None:
    import torch

    with r.step("prompt tokens on every block"):
        undo = [_prompt(b.prompt, surfaces.hidden_size) for b in surfaces.blocks]
        try:
            with torch.no_grad():
                out = module(batch)
        finally:
            for u in undo:
                u()
        if out.tokens is not None:
            width = batch["padding_mask"].shape[1]
            r.expect(
                out.tokens.shape[1] <= width,
                "prompt positions are not stripped from EncoderOutput.tokens",
            )


# --------------------------------------------------------------------------- adapters


def check_adapter(
    cls: type[Adapter],
    *,
    options: Mapping[str, Any] | None = None,
    backbones: Iterable[type[Backbone]] | None = None,
    registry: Registry | None = None,
    workdir: Path | None = None,
) -> None:
    """Check an adapter class against the contract, on every backbone it fits.

    Verifies the class attributes (``requires`` a frozenset of capabilities, ``trains`` and
    ``exclusive`` bools, ``config_cls`` as for every plugin) and the option-dependent traits
    (``requires_for``, ``uses_cached_embeddings``, ``merge_for_inference``) for
    ``config_cls(**options)``. Then, for each backbone (default: every backbone in ``registry``,
    default the built-ins) whose ``provides`` covers ``requires_for(config)``, on its
    ``example_config`` instance, frozen: ``apply`` returns an :class:`AdapterHandle` whose
    parameters are reachable from the module (so they are saved), include every new parameter
    and every tensor that requires grad afterwards; applying to a second build gives the same
    parameter names (adapter-only files reload); one training step gives every listed tensor a
    gradient, none to a frozen one, and changes only listed tensors; ``merge``/``unmerge`` come
    together, and when offered keep the outputs and round-trip; an adapter that trains nothing
    lists nothing, and one that uses cached embeddings leaves the outputs unchanged.

    Raises
    ------
    PluginCheckError
        Listing every problem found.
    """
    from sctune.core.adapter import Adapter, AdapterHandle

    r = _Report(f"adapter '{getattr(cls, 'name', cls)}'")
    try:
        if not _check_class(cls, Adapter, "adapter", r):
            raise _Stop
        r.expect(
            _capabilities(getattr(cls, "requires", None)),
            "'requires' must be a frozenset of sctune.core.capabilities.Capability",
        )
        for trait in ("trains", "exclusive"):
            r.expect(isinstance(getattr(cls, trait, None), bool), f"'{trait}' must be a bool")
        config = _config(cls, options, r)
        plugin = cls()
        with r.step("requires_for(config)", required=True):
            needs = cls.requires_for(config)
        r.expect(_capabilities(needs), "requires_for() must return a frozenset of Capability")
        with r.step("uses_cached_embeddings(config)"):
            cached = plugin.uses_cached_embeddings(config)
            r.expect(isinstance(cached, bool), "uses_cached_embeddings() must return a bool")
        with r.step("merge_for_inference(config)"):
            merges = plugin.merge_for_inference(config)
            r.expect(isinstance(merges, bool), "merge_for_inference() must return a bool")
        if backbones is None:
            from sctune import testing

            reg = registry if registry is not None else testing.registry_with()
            backbones = [reg.get("backbone", n).cls for n in reg.names("backbone")]
        fits = [b for b in backbones if set(needs) <= set(b.provides)]
        if not fits:
            r.fail(f"no backbone to check on provides {', '.join(sorted(map(str, needs)))}")
        with _workdir(workdir) as tmp:
            for b in fits:
                rb = _Report(f"{r.what} on backbone '{b.name}'")
                try:
                    _check_adapter_on(plugin, config, b, tmp / b.name, AdapterHandle, rb)
                except _Stop:
                    pass
                r.failures += rb.failures
    except _Stop:
        pass
    _finish([r])


def _check_adapter_on(
    plugin: Adapter,
    config: PluginConfig,
    backbone: type[Backbone],
    tmp: Path,
    handle_cls: type,
    r: _Report,
) -> None:
    import torch

    from sctune import testing

    try:
        ex = testing.example_backbone(backbone, tmp / "a")
    except NotImplementedError:
        return  # a backbone without example_config cannot be built here
    module = ex.module
    before = {id(p) for p in module.parameters()}
    with torch.no_grad():
        reference = module(ex.batch).cell
    with r.step("apply(module, surfaces, config)", required=True):
        handle = plugin.apply(module, ex.surfaces(), config)
    if not r.expect(isinstance(handle, handle_cls), "apply() must return an AdapterHandle"):
        raise _Stop
    params = list(handle.parameters)
    names = {id(p): n for n, p in module.named_parameters()}
    ids = {id(p) for p in params}
    r.expect(handle.name == plugin.name, f"handle.name is {handle.name!r}, not {plugin.name!r}")
    r.expect(
        all(isinstance(p, torch.nn.Parameter) for p in params),
        "handle.parameters must hold nn.Parameter objects",
    )
    r.expect(len(ids) == len(params), "handle.parameters lists a tensor twice")
    r.expect(
        ids <= set(names),
        "handle.parameters holds tensors that are not parameters of the module (attach new "
        "modules inside the surfaces' slots so they are saved and reloaded)",
    )
    unlisted = sorted(names[i] for i in set(names) - before - ids)
    r.expect(not unlisted, f"new parameters missing from handle.parameters: {unlisted[:6]}")
    grad = sorted(n for n, p in module.named_parameters() if p.requires_grad and id(p) not in ids)
    r.expect(not grad, f"tensors require grad but are not in handle.parameters: {grad[:6]}")
    if not plugin.trains:
        r.expect(not params, "trains=False, but handle.parameters is not empty")
    if plugin.uses_cached_embeddings(config):
        with torch.no_grad():
            same = torch.equal(module(ex.batch).cell, reference)
        r.expect(
            not params and same,
            "uses_cached_embeddings() is True, but the adapter changes the backbone",
        )
    with r.step("apply() on a second build"):
        twin = testing.example_backbone(backbone, tmp / "b")
        h2 = plugin.apply(twin.module, twin.surfaces(), config)
        names2 = {id(p): n for n, p in twin.module.named_parameters()}
        first = [names.get(id(p), "?") for p in params]
        second = [names2.get(id(p), "?") for p in h2.parameters]
        r.expect(
            first == second,
            "a second build gets different parameter names; adapter-only files could not be "
            "reloaded",
        )
    if (handle.merge is None) != (handle.unmerge is None):
        r.fail("handle.merge and handle.unmerge must be given together")
    if plugin.merge_for_inference(config) and handle.merge is None:
        r.fail("merge_for_inference() is True, but the handle has no merge")
    if plugin.trains and params:
        _train_step(module, ex.batch, params, names, r)
    if handle.merge is not None and handle.unmerge is not None:
        _check_merge(module, ex.batch, handle, r)


def _train_step(
    module: nn.Module,
    batch: dict[str, torch.Tensor],
    params: list[nn.Parameter],
    names: dict[int, str],
    r: _Report,
) -> None:
    import torch

    frozen = {id(module.get_parameter(n)) for n in getattr(module, "always_frozen", ())}
    params = [p for p in params if id(p) not in frozen]
    ids = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in ids)
    snapshot = {n: p.detach().clone() for n, p in module.named_parameters()}
    module.train()
    with r.step("a training step (forward, backward, SGD)"):
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(params, lr=0.5)
        loss = module(batch).cell.float().pow(2).mean()
        loss.backward()
        dead = [names[id(p)] for p in params if p.grad is None]
        r.expect(not dead, f"listed tensors got no gradient (not on the forward path): {dead[:6]}")
        leaked = [
            n for n, p in module.named_parameters() if id(p) not in ids and p.grad is not None
        ]
        r.expect(not leaked, f"frozen tensors got a gradient: {leaked[:6]}")
        optimizer.step()
        changed = {n for n, p in module.named_parameters() if not torch.equal(p, snapshot[n])}
        listed = {names[i] for i in ids}
        outside = sorted(changed - listed)
        r.expect(not outside, f"the training step changed unlisted tensors: {outside[:6]}")
        r.expect(bool(changed & listed), "the training step changed none of the listed tensors")
    module.eval()


def _check_merge(
    module: nn.Module, batch: dict[str, torch.Tensor], handle: Any, r: _Report
) -> None:
    import torch

    with r.step("merge() / unmerge()"), torch.no_grad():
        plain = module(batch).cell
        handle.merge()
        merged = module(batch).cell
        handle.unmerge()
        back = module(batch).cell
        scale = float(plain.abs().max()) + 1.0
        r.expect(
            torch.allclose(merged, plain, rtol=1e-4, atol=1e-5 * scale),
            f"merge() changes the outputs (max diff {float((merged - plain).abs().max()):.3g})",
        )
        r.expect(
            torch.allclose(back, plain, rtol=1e-5, atol=1e-6 * scale),
            f"unmerge() does not restore the outputs (max diff {float((back - plain).abs().max()):.3g})",
        )


# --------------------------------------------------------------------------- tasks


def _run_head(
    cls: type[Task], head: Any, emb: torch.Tensor, gen: torch.Generator, r: _Report
) -> torch.Tensor:
    """Head outputs for the fake cell embeddings ``emb``: a cell head takes them directly; an
    encoder head gets fake per-token outputs (8 positions) and, when it trains a masked
    objective, :func:`sctune.testing.toy_masked_values` and a corrupted fake batch."""
    import torch

    from sctune.core.cells import EncoderOutput
    from sctune.core.objective import EncoderHead
    from sctune.testing import toy_masked_values

    if cls.head_input == "cell":
        return head(emb)
    if not r.expect(
        isinstance(head, EncoderHead),
        "head_input is 'encoder', so head() must return a sctune.core.objective.EncoderHead",
    ):
        raise _Stop
    n, d = emb.shape
    tokens = torch.randn(n, 8, d, generator=gen)
    tokens[:, 0] = emb
    batch = {
        "values": torch.rand(n, 8, generator=gen) * 5,
        "padding_mask": torch.zeros(n, 8, dtype=torch.bool),
    }
    out = EncoderOutput(cell=emb, tokens=tokens, padding_mask=batch["padding_mask"])
    if not head.masked_modelling:
        return head(out, batch, None)
    head.attach(toy_masked_values(d))
    masked = head.corrupt(batch, gen)
    return head(out, masked.batch, masked)


def check_task(
    cls: type[Task], *, options: Mapping[str, Any] | None = None, hidden_size: int = 16
) -> None:
    """Check a task class against the contract, on a tiny fake embedding.

    Verifies the class attributes (``monitors`` maps names to ``"min"``/``"max"``, ``config_cls``
    as for every plugin), then on :func:`sctune.testing.tiny_adata` (labels in ``cell_type``, a
    pseudo-batch in ``sample``; 200 cells split 60/20/20 per label) with the task's
    ``example_config`` options updated by ``options`` and random ``(cells, hidden_size)``
    embeddings: ``preflight`` finds no error; ``prepare`` and ``targets`` (given ``obs`` and the
    ``expression``) give one numeric target per cell; the ``head`` maps embeddings to outputs
    whose training ``loss``
    is a finite scalar that reaches every head parameter; ``sample_weights`` is ``None`` or one
    weight per training cell; ``validation_metrics`` returns floats under declared ``monitors``;
    ``evaluate`` returns a dict; ``annotate`` gives one value per cell and column; ``summary``
    and ``describe`` return strings; ``state`` is JSON and ``from_state(state)`` gives the same
    targets, annotations and state.

    Raises
    ------
    PluginCheckError
        Listing every problem found.
    """
    from sctune.core.task import Task

    r = _Report(f"task '{getattr(cls, 'name', cls)}'")
    try:
        if not _check_class(cls, Task, "task", r):
            raise _Stop
        monitors = getattr(cls, "monitors", None)
        r.expect(
            isinstance(monitors, dict) and all(v in ("min", "max") for v in monitors.values()),
            f"'monitors' must map metric names to 'min' or 'max' (got {monitors!r})",
        )
        example = getattr(cls, "example_config", dict)
        with r.step("example_config()", required=True):
            defaults = dict(example())
        _check_task_instance(cls, _config(cls, {**defaults, **(options or {})}, r), hidden_size, r)
    except _Stop:
        pass
    _finish([r])


def _task_data(n_cells: int = 200) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(labels, obs, expression, split)`` of :func:`sctune.testing.tiny_adata`: labels in
    ``cell_type``, a pseudo-batch in ``sample``; split 60/20/20 per label, every label trained."""
    import numpy as np
    from scipy import sparse

    from sctune import testing
    from sctune.core.cells import Expression
    from sctune.core.data import detect_kind

    adata = testing.tiny_adata(n_cells, n_genes=200, min_per_class=3)
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    expression = Expression(
        X=X,
        genes=tuple(map(str, adata.var_names)),
        kind=detect_kind(X),
        library_size=adata.obs["n_counts"].to_numpy(dtype=np.float64),
        cell_ids=tuple(map(str, adata.obs_names)),
    )
    labels = adata.obs[testing.LABEL_COLUMN].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for name in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == name)).tolist()
        n_out = len(idx) // 5
        parts["test"] += idx[:n_out]
        parts["valid"] += idx[n_out : 2 * n_out]
        parts["train"] += idx[2 * n_out :]
    split = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}
    return labels, adata.obs, expression, split


def _check_task_instance(cls: type[Task], config: Any, hidden: int, r: _Report) -> None:
    import numpy as np
    import torch

    task = cls()
    labels, obs, expression, split = _task_data()
    with r.step("preflight(labels, split, config, obs=...)"):
        pre = task.preflight(labels, split, config, obs=obs)
        r.expect(not getattr(pre, "errors", []), f"preflight() found errors: {pre.errors}")
    with r.step("prepare(labels, split, config, obs=..., expression=...)", required=True):
        prepared = task.prepare(labels, split, config, obs=obs, expression=expression)
    with r.step("targets(labels, prepared, obs=..., expression=...)", required=True):
        targets = np.asarray(task.targets(labels, prepared, obs=obs, expression=expression))
    r.expect(
        targets.shape[:1] == labels.shape and np.issubdtype(targets.dtype, np.number),
        f"targets() must give numbers, one row per cell (got {targets.dtype} {targets.shape})",
    )
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(labels.size, hidden, generator=gen)
    with r.step("head(hidden_size, prepared, config)", required=True):
        head = task.head(hidden, prepared, config)
        logits = _run_head(cls, head, emb, gen, r)
    train = torch.as_tensor(split["train"])
    with r.step("loss(logits, targets, prepared, config)"):
        loss = task.loss(logits[train], torch.as_tensor(targets)[train], prepared, config)
        ok = loss.dim() == 0 and bool(torch.isfinite(loss))
        if r.expect(ok, f"loss() must be a finite scalar (got {loss})"):
            loss.backward()
            dead = [n for n, p in head.named_parameters() if p.grad is None]
            r.expect(not dead, f"head parameters the loss does not reach: {dead}")
    with r.step("sample_weights(prepared, config)"):
        w = task.sample_weights(prepared, config)
        r.expect(
            w is None or len(w) == len(split["train"]),
            "sample_weights() must be None or one weight per training cell",
        )
    out = logits.detach().numpy()
    valid, test = split["valid"], split["test"]
    with r.step("validation_metrics(...)"):
        metrics = task.validation_metrics(out[valid], targets[valid], prepared, config)
        r.expect(
            isinstance(metrics, dict) and all(isinstance(v, float) for v in metrics.values()),
            "validation_metrics() must return dict[str, float]",
        )
        undeclared = sorted(f"valid/{k}" for k in metrics if f"valid/{k}" not in cls.monitors)
        r.expect(not undeclared, f"validation metrics not declared in 'monitors': {undeclared}")
    with r.step("evaluate(...)"):
        result = task.evaluate(
            logits=out[test],
            targets=targets[test],
            embeddings=emb[test].numpy(),
            prepared=prepared,
            config=config,
            out_dir=None,
        )
        r.expect(isinstance(result, dict), "evaluate() must return a dict")
        r.expect(isinstance(task.summary(result), str), "summary() must return a string")
    r.expect(isinstance(task.describe(prepared), str), "describe() must return a string")
    with r.step("annotate(logits, prepared)"):
        columns = task.annotate(out, prepared)
        bad = [k for k, v in columns.items() if len(v) != labels.size]
        r.expect(not bad, f"annotate() columns without one value per cell: {bad}")
    with r.step("state(prepared) -> JSON -> from_state(state)"):
        state = task.state(prepared)
        text = json.dumps(state)
        again = task.from_state(json.loads(text))
        r.expect(
            json.dumps(task.state(again), sort_keys=True) == json.dumps(state, sort_keys=True),
            "state(from_state(state)) differs from state",
        )
        restored = task.targets(labels, again, obs=obs, expression=expression)
        r.expect(
            np.array_equal(np.asarray(restored), targets),
            "targets() differ after from_state(state(prepared))",
        )
        cols2 = task.annotate(out, again)
        same = set(cols2) == set(columns) and all(
            np.array_equal(np.asarray(cols2[k]), np.asarray(columns[k])) for k in columns
        )
        r.expect(same, "annotate() differs after from_state(state(prepared))")


# --------------------------------------------------------------------------- any component


def check_plugin(*components: type, workdir: Path | None = None) -> None:
    """Run :func:`check_backbone`, :func:`check_adapter` or :func:`check_task` on each component
    class (adapters on the built-in backbones) and raise one :class:`PluginCheckError` listing
    every problem of all of them."""
    from sctune.core.adapter import Adapter
    from sctune.core.backbone import Backbone
    from sctune.core.task import Task

    failures: list[str] = []
    for comp in components:
        if isinstance(comp, type) and issubclass(comp, Backbone):
            check: Callable[..., None] = check_backbone
        elif isinstance(comp, type) and issubclass(comp, Adapter):
            check = check_adapter
        elif isinstance(comp, type) and issubclass(comp, Task):
            check = check_task
        else:
            failures.append(f"{comp!r}: not a Backbone, Adapter or Task subclass")
            continue
        try:
            if check is check_task:
                check(comp)
            else:
                check(comp, workdir=None if workdir is None else Path(workdir) / comp.__name__)
        except PluginCheckError as exc:
            failures += exc.failures
    if failures:
        raise PluginCheckError(failures)
