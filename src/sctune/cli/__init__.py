"""The Typer CLI (``sctune``)."""
