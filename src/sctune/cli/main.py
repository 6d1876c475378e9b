"""The ``sctune`` command: a thin Typer layer over :mod:`sctune.api`.

Each command parses its arguments, calls one API function and prints. User mistakes
(:class:`~sctune.core.errors.SctuneError`) print ``error: ...`` with no traceback and exit 2;
anything else is a bug and keeps its traceback. ``--help`` imports no torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="sctune",
    help="Parameter-efficient fine-tuning of single-cell foundation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipes_app = typer.Typer(help="List shipped recipes or copy one out.", no_args_is_help=False)
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
) -> None:
    """Train as the recipe says and write a run directory (metrics, plots, adapter weights)."""
    from sctune import api

    result = api.run(
        recipe,
        overrides or [],
        registry=_registry(),
        progress=not quiet,
        log=lambda m: typer.echo(m, err=False),
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
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    console.print(f"head: {report['head']:,} parameters ({report['n_classes']} classes)")
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
) -> None:
    """Annotate new cells (obs sctune_prediction, sctune_confidence; obsm X_sctune)."""
    from sctune import api

    out = api.predict(run_dir, query, output, registry=_registry(), checkpoint=checkpoint)
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
    from rich.console import Console
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
    console = Console(width=160)
    console.print(table)
    if options:
        for r in rows:
            console.print(f"\n[b]{r['kind']} {r['name'][:40]}[/b]: {r['description']}")
            for k, o in r["options"].items():
                console.print(f"  {k} = {o['default']}  {o['description']}", highlight=False)


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
    from sctune import api
    from sctune.core.errors import SctuneError

    shipped = api.recipes(_registry())
    from sctune.core.recipe import find_recipe

    src = (
        find_recipe(name, [p.parent for p in shipped.values()])
        if name not in shipped
        else shipped[name]
    )
    target = dest or Path(Path(name).name + ".yaml")
    if target.exists():
        raise SctuneError(f"'{target}' already exists; choose another destination")
    target.write_text(src.read_text())
    typer.echo(f"wrote {target}")


def main() -> None:
    """Entry point: add plugin commands, run, and turn user mistakes into exit code 2."""
    from sctune.core.errors import SctuneError

    debug = "--debug" in sys.argv
    try:
        if os.environ.get("SCTUNE_NO_PLUGIN_COMMANDS") != "1" and not _help_only():
            _registry_for_commands()
        app(standalone_mode=False)
    except SctuneError as exc:
        if debug:
            raise
        typer.echo(exc.render(), err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


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
