"""The ``sctune`` command: a thin Typer layer over :mod:`sctune.api`.

Each command parses its arguments, calls one API function and prints. User mistakes
(:class:`~sctune.core.errors.SctuneError`) print ``error: ...`` with no traceback and exit 2;
anything else is a bug and keeps its traceback. ``--help`` imports no torch.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup


def _flags_only(params: list[Any]) -> list[Any]:
    """Show on/off options as bare flags (typer prints '<bool>' after them, as if they took a
    value)."""
    for p in params:
        if getattr(p, "is_flag", False) and not getattr(p, "count", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Group(TyperGroup):
    """A Typer group whose help, and its commands' help, shows flags without a value type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_only(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not isinstance(cmd, TyperGroup):
            _flags_only([*cmd.params, cmd.get_help_option(ctx)])
        return cmd


app = typer.Typer(
    name="sctune",
    cls=_Group,
    help="Parameter-efficient fine-tuning of single-cell foundation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipes_app = typer.Typer(
    cls=_Group, help="List shipped recipes or copy one out.", no_args_is_help=False
)
app.add_typer(recipes_app, name="recipes")

_STATE: dict[str, Any] = {"plugins": [], "debug": False, "registry": None}

PluginsOpt = Annotated[
    list[Path] | None,
    typer.Option("--plugins", help="YAML file listing local plugin modules (repeatable)."),
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="dotted.key=value overrides, e.g. trainer.epochs=5")
]


def _registry() -> Any:
    if _STATE["registry"] is None:
        from sctune import api

        _STATE["registry"] = api.get_registry(_STATE["plugins"])
    return _STATE["registry"]


@app.callback()
def _main(
    plugins: PluginsOpt = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for every error.")
    ] = False,
) -> None:
    """Adapt scGPT, Geneformer and scBERT with scPEFT adapters, from YAML recipes."""
    _STATE["plugins"] = list(plugins or [])
    _STATE["debug"] = debug


@app.command("run")
def run_cli(
    recipe: Annotated[
        str, typer.Argument(help="Recipe file or shipped recipe name (e.g. quickstart).")
    ],
    overrides: Overrides = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run of this recipe from its last finished epoch.",
        ),
    ] = False,
) -> None:
    """Train as the recipe says and write a run directory (metrics, plots, adapter weights).

    Ctrl-C exits with 130 and SIGTERM with 143; the run so far stays in '<dir>.partial' and
    '--resume' continues it.
    """
    from sctune import api
    from sctune.core.rundir import handle_signals

    handle_signals()
    result = api.run(
        recipe,
        overrides or [],
        registry=_registry(),
        progress=not quiet,
        log=lambda m: typer.echo(m, err=False),
        resume=resume,
    )
    if os.environ.get("RANK", "0") == "0":  # DDP: only rank 0 has a run directory
        typer.echo(f"wrote {', '.join(sorted(result.files))}")


@app.command("validate")
def validate_cli(
    recipe: Annotated[str, typer.Argument(help="Recipe file or shipped recipe name.")],
    overrides: Overrides = None,
    no_data: Annotated[
        bool, typer.Option("--no-data", help="Check the recipe only, not the data.")
    ] = False,
) -> None:
    """Check a recipe (keys, plugin options, compatibility) and its data (file, columns, genes, split)."""
    from sctune import api

    report = api.validate(recipe, overrides or [], registry=_registry(), check_data=not no_data)
    for line in report["info"]:
        typer.echo(f"  {line}")
    for line in report["warnings"]:
        typer.echo(f"warning: {line}")
    typer.echo(f"recipe '{report['recipe']}' is valid")


@app.command("inspect")
def inspect_cli(
    recipe: Annotated[str, typer.Argument(help="Recipe file or shipped recipe name.")],
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    no_audit: Annotated[
        bool, typer.Option("--no-audit", help="Skip the one-batch gradient audit.")
    ] = False,
) -> None:
    """Build the model without training: total and trainable parameters per module."""
    from sctune import api

    report = api.inspect(recipe, overrides or [], registry=_registry(), audit=not no_audit)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    console = _console()
    table = Table(
        title=f"{report['backbone']} + {', '.join(a['name'] for a in report['adapters'])}"
    )
    for col in ("module", "total", "trainable"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for row in report["modules"]:
        table.add_row(row["module"], f"{row['total']:,}", f"{row['trainable']:,}")
    table.add_row("[b]all[/b]", f"[b]{report['total']:,}[/b]", f"[b]{report['trainable']:,}[/b]")
    console.print(table)
    for a in report["adapters"]:
        console.print(f"adapter {a['name']}: {a['trainable']:,} trainable parameters")
    shape = report["task"]["describe"]
    console.print(f"head: {report['head']:,} parameters" + (f" ({shape})" if shape else ""))
    if report.get("randomly_initialised"):
        console.print("[yellow]backbone is randomly initialised (no checkpoint)[/yellow]")
    audit = report.get("gradient_audit")
    if audit:
        from sctune.core.audit import GradientAudit

        ga = GradientAudit(
            rows=audit["tensors"],
            dead=audit["dead"],
            leaked=audit["leaked"],
            zero=audit["zero_at_first_step"],
        )
        grads = Table(title="gradient audit (one batch, before any step)")
        for col in ("tensor", "shape", "grad norm"):
            grads.add_column(
                col, justify="right" if col == "grad norm" else "left", overflow="fold"
            )
        for r in ga.rows:
            norm = "NONE" if r["grad_norm"] is None else f"{r['grad_norm']:.3e}"
            grads.add_row(r["name"], "x".join(map(str, r["shape"])), norm)
        console.print(grads)
        console.print("gradient audit: " + ("ok" if ga.ok else "FAILED"))
        if not ga.ok:
            ga.raise_if_bad()


@app.command("predict")
def predict_cli(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by 'sctune run'.")],
    query: Annotated[str, typer.Argument(help="The .h5ad to annotate.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Annotated .h5ad to write.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Backbone checkpoint, if it moved.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")
    ] = False,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size", min=1, help="Cells read from disk at a time (default 20,000)."
        ),
    ] = None,
) -> None:
    """Annotate new cells (obs sctune_prediction, sctune_confidence; obsm X_sctune)."""
    from sctune import api

    out = api.predict(
        run_dir,
        query,
        output,
        registry=_registry(),
        checkpoint=checkpoint,
        overwrite=overwrite,
        chunk_size=chunk_size,
        progress=True,
    )
    typer.echo(f"wrote {out}")


@app.command("plugins")
def plugins_cli(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    options: Annotated[
        bool, typer.Option("--options", help="List each plugin's recipe options.")
    ] = False,
) -> None:
    """List installed backbones, adapters and tasks with versions, licences and capabilities."""
    from sctune import api

    rows = api.plugins(_registry())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table()
    for col in ("kind", "name", "distribution", "licence", "provides / requires"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["kind"],
            r["name"],
            f"{r['distribution']} {r['version']}".strip(),
            r["licence"],
            ", ".join(r["capabilities"]) or ("-" if r["kind"] != "task" else ""),
        )
    console = _console(width=160)
    console.print(table)
    if options:
        for r in rows:
            console.print(f"\n[b]{r['kind']} {r['name'][:40]}[/b]: {r['description']}")
            for k, o in r["options"].items():
                console.print(f"  {k} = {o['default']}  {o['description']}", highlight=False)


@app.command("bench")
def bench_cli(
    grid: Annotated[
        str, typer.Argument(help="Grid file, or a shipped grid name (e.g. paper_small).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Results folder (default bench/<name>).")
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Cells run at once (one per GPU).")
    ] = 1,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only cells whose id contains this text (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the cells; run nothing.")
    ] = False,
    docs: Annotated[
        Path | None,
        typer.Option("--docs", help="Also write the markdown summary into this file's markers."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Benchmark backbones x methods x datasets x seeds x tasks on shared splits.

    Baselines (logistic regression, kNN on PCA; PCA and Harmony; head-only and zero-shot per
    backbone) run on the same splits. Writes tables with 95% intervals over seeds, paired
    comparisons, per-class F1, results.md and a self-contained report.html. A rerun skips
    finished cells and resumes interrupted ones; a failed cell does not stop the others.
    """
    from sctune import api

    if dry_run:
        plan = api.bench(grid, registry=_registry(), dry_run=True)
        for cell in plan.cells:
            typer.echo(f"{cell.id}  {cell.hash}")
        for s in plan.skipped:
            typer.echo(
                f"skipped {s['task']}/{s['dataset']}/{s['backbone']}/{s['method']}: {s['reason']}"
            )
        for name, why in plan.absent.items():
            typer.echo(f"dataset '{name}' skipped: {why} (optional dataset)")
        typer.echo(f"grid '{plan.spec.name}' is valid: {len(plan.cells)} cells")
        return
    result = api.bench(
        grid,
        out=out,
        jobs=jobs,
        registry=_registry(),
        only=only or [],
        progress=not quiet,
        log=typer.echo,
        docs=docs,
    )
    typer.echo(
        f"ran {len(result.ran)}, resumed {len(result.resumed)}, finished earlier "
        f"{len(result.finished_earlier)}, failed {len(result.failed)} in {result.seconds:.0f} s; "
        f"results: {result.out / 'results'}"
    )
    if result.failed:
        raise typer.Exit(1)


@recipes_app.callback(invoke_without_command=True)
def recipes_cli(ctx: typer.Context) -> None:
    """List shipped recipes (use 'sctune recipes init NAME' to copy one)."""
    if ctx.invoked_subcommand is None:
        from sctune import api

        for name, path in api.recipes(_registry()).items():
            first = path.read_text().splitlines()[0].lstrip("# ").strip()
            typer.echo(f"{name:<40} {first}")


@recipes_app.command("init")
def recipes_init_cli(
    name: Annotated[str, typer.Argument(help="Shipped recipe name.")],
    dest: Annotated[
        Path | None, typer.Argument(help="Where to write it (default NAME.yaml).")
    ] = None,
) -> None:
    """Copy a shipped recipe into the working directory to edit it."""
    from sctune.core.errors import SctuneError
    from sctune.core.recipe import find_recipe

    src = find_recipe(name, _registry().recipe_dirs())
    target = dest or Path(Path(name).name.removesuffix(".yaml") + ".yaml")
    if target.exists() or target.is_symlink():
        raise SctuneError(
            f"'{target}' already exists; nothing was overwritten",
            hint="give another destination: 'sctune recipes init NAME DEST'",
        )
    if not target.parent.is_dir():
        raise SctuneError(
            f"cannot write '{target}': '{target.parent}' is not an existing folder",
            hint="create the folder first, or give another destination",
        )
    target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    typer.echo(f"wrote {target}")


def main() -> None:
    """Entry point: add plugin commands, run, and turn user mistakes into exit code 2."""
    from sctune.core.errors import SctuneError

    debug = "--debug" in sys.argv
    _route_warnings()
    try:
        if os.environ.get("SCTUNE_NO_PLUGIN_COMMANDS") != "1" and not _help_only():
            _registry_for_commands()
        code = app(standalone_mode=False)  # typer returns (not raises) the exit code of Ctrl-C
        if code == 128 + signal.SIGINT:
            _interrupted(signal.SIGINT)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SctuneError as exc:
        if debug:
            raise
        typer.echo(exc.render(), err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        if _broken_pipe(exc):  # click and rich turn a closed stdout into exit 1
            _quiet_broken_pipe()
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except KeyboardInterrupt:
        _interrupted(signal.SIGINT)
    except BrokenPipeError:  # 'sctune plugins | head': the reader left, which is fine
        _quiet_broken_pipe()
    except Exception as exc:
        if _is_click(exc, "ClickException"):  # typer vendors click: match by class name
            _usage_error(exc)
        if _is_click(exc, "Abort"):
            if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
                _interrupted(signal.SIGINT)
            sys.exit(1)
        raise
    except BaseException as exc:
        from sctune.core.rundir import Interrupted

        if isinstance(exc, Interrupted):
            _interrupted(exc.signum)
        raise


def _interrupted(signum: int) -> None:
    """Exit as shells expect after a signal (128 + its number: 130 for SIGINT, 143 for SIGTERM)."""
    typer.echo(f"error: interrupted by {signal.Signals(signum).name}", err=True)
    sys.exit(128 + int(signum))


def _console(**options: Any) -> Any:
    """A rich console that lets a closed stdout surface as ``BrokenPipeError`` (rich itself
    exits 1), so ``sctune plugins | head`` exits 0."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console(**options)


def _is_click(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(exc).__mro__)


def _usage_error(exc: Any) -> None:
    """A command-line usage mistake (unknown command or option, missing argument): exit 2."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message().strip().rstrip(".")
    text = f"error: {message[:1].lower()}{message[1:]}"
    if ctx is not None:
        text = (
            f"{ctx.get_usage().strip()}\n{text}\nhint: '{ctx.command_path} --help' shows the usage"
        )
    typer.echo(text, err=True)
    sys.exit(2)


def _broken_pipe(exc: BaseException) -> bool:
    """True when ``exc`` was raised while handling a write to a closed pipe."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.EPIPE:
            return True
        seen = seen.__context__
    return False


def _quiet_broken_pipe() -> None:
    """Exit 0 without a message when stdout's reader has gone (e.g. ``| head``)."""
    try:  # point stdout at devnull so the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass
    sys.exit(0)


def _route_warnings() -> None:
    """Print Python warnings (sctune's and libraries') as ``warning: <message>`` lines on
    stderr, the channel a run's own warnings use, instead of raw ``UserWarning`` source lines."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        from sctune.core.errors import SctuneWarning

        text = str(message).strip()
        if not issubclass(category, SctuneWarning):
            parts = Path(filename or "").parts
            root = parts.index("site-packages") + 1 if "site-packages" in parts else -1
            origin = parts[root] if parts and root < len(parts) else ""
            text += f" ({category.__name__}{f' from {origin}' if origin else ''})"
        try:
            typer.echo(f"warning: {text}", err=True)
        except (OSError, ValueError):
            pass

    warnings.showwarning = show


def _help_only() -> bool:
    args = sys.argv[1:]
    return not args or args in (["--help"], ["-h"])


def _registry_for_commands() -> None:
    plugins = []
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == "--plugins" and i + 1 < len(args):
            plugins.append(Path(args[i + 1]))
        elif a.startswith("--plugins="):
            plugins.append(Path(a.split("=", 1)[1]))
    _STATE["plugins"] = plugins
    _registry().pm.hook.sctune_add_commands(app=app)


if __name__ == "__main__":  # pragma: no cover
    main()
