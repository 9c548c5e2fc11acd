"""The ``studypub`` command. Each group or command lives in its own module of this package."""

from __future__ import annotations

import logging

import typer

from studypub.cli import backfill, bridge, db, dead, prune, serve, status, token, verify, worker
from studypub.db import set_process_role

app = typer.Typer(
    name="studypub",
    help="Publish study content from an authoring database to viewers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _start(context: typer.Context) -> None:
    # PostgreSQL shows the command in pg_stat_activity: studypub-worker/<pid>.
    set_process_role(context.invoked_subcommand or "cli")
    # Library warnings (a lost database, say) go to the log handlers that long-running
    # commands (serve, worker) set up; a one-shot command says what happened in its own
    # one-line error, without Python's last-resort handler printing them first.
    logging.getLogger("studypub").addHandler(logging.NullHandler())


app.add_typer(db.app, name="db")
app.add_typer(token.app, name="token")
app.add_typer(dead.app, name="dead")
# Commands register below (one line per module).
app.command("backfill")(backfill.command)
for _command in (serve.serve, serve.demo, serve.replicate):
    app.command()(_command)
app.command()(worker.worker)
app.command()(bridge.bridge)
app.command()(status.status)
app.command()(prune.prune)
app.command("verify")(verify.command)


def main() -> None:
    app()
