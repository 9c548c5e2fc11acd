"""The ``studypub`` command. Each group or command lives in its own module of this package."""

from __future__ import annotations

import typer

from studypub.cli import backfill, db, prune, serve, verify, worker

app = typer.Typer(
    name="studypub",
    help="Publish study content from an authoring database to viewers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
# Commands register below (one line per module).
app.command("backfill")(backfill.command)
for _command in (serve.serve, serve.demo, serve.replicate):
    app.command()(_command)
app.command()(worker.worker)
app.command()(worker.status)
app.command()(prune.prune)
app.command("verify")(verify.command)


def main() -> None:
    app()
