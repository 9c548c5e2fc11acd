"""``studypub token issue``: a learner's viewer token, from a shell.

Signed with ``STUDYPUB_TOKEN_SECRET``, the key the servers verify with; the token alone goes
to stdout, so that a script can take it (``TOKEN=$(studypub token issue --learner ana)``).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from studypub import tokens
from studypub.cli.common import fail, parse_duration
from studypub.errors import InvalidInput
from studypub.projection import KINDS

app = typer.Typer(help="Viewer tokens for learners' apps.", no_args_is_help=True)


@app.command()
def issue(
    learner: Annotated[
        str,
        typer.Option(
            "--learner", help="The learner whose progress the token reads.", show_default=False
        ),
    ],
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl", help="How long it holds: a number and a unit, m, h, d or w (1m to 366d)."
        ),
    ] = "1d",
    kinds: Annotated[
        str | None,
        typer.Option(
            "--kinds",
            help=f"Comma-separated kinds it may read ({', '.join(KINDS)}); default all.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a signed viewer token for LEARNER: it reads the shared content and that
    learner's own progress, until it expires."""
    secret = os.environ.get(tokens.SECRET_ENV)  # never an option: command lines are visible to all
    if not secret:
        raise fail(
            f"{tokens.SECRET_ENV} is not set: set it to the signing key your servers use"
            " (at least 32 characters) to issue tokens they accept"
        )
    allowed = None if kinds is None else [k.strip() for k in kinds.split(",") if k.strip()]
    try:
        if allowed == []:
            raise InvalidInput("--kinds is empty: name at least one kind, or leave it out")
        token, _ = tokens.issue(secret, learner, ttl=parse_duration(ttl), kinds=allowed)
    except InvalidInput as exc:
        raise fail(str(exc)) from None
    print(token)
