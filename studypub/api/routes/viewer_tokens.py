"""``POST /v1/viewer-tokens``: a learner's viewer token, issued by an author.

An app's backend, holding the author token, asks for a token for the learner who signed in
and hands it to the learner's app, which reads the feed with it (see
:mod:`studypub.tokens`). ``studypub token issue`` does the same from a shell.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, status

from studypub import tokens
from studypub.api.deps import SettingsDep
from studypub.api.routes import common
from studypub.api.schemas import ViewerTokenCreate, ViewerTokenPublic

router = APIRouter(prefix="/v1", tags=["viewer tokens"], dependencies=common.AUTHORING)


@router.post(
    "/viewer-tokens",
    status_code=status.HTTP_201_CREATED,
    responses=common.errors(*common.BODY, database=False),
    summary="Issue a learner's viewer token",
)
async def issue_viewer_token(body: ViewerTokenCreate, settings: SettingsDep) -> ViewerTokenPublic:
    """A signed token that reads the shared content and ``learner``'s own progress, of
    ``kinds`` (default: all), until ``expires_at``. Not stored: it holds until it expires,
    or until the server's ``STUDYPUB_TOKEN_SECRET`` changes."""
    assert settings.token_secret is not None  # create_app makes one when unset
    token, expires = tokens.issue(
        settings.token_secret,
        body.learner,
        ttl=timedelta(seconds=body.ttl_s),
        kinds=None if body.kinds is None else [kind.value for kind in body.kinds],
    )
    return ViewerTokenPublic(
        token=token, learner=body.learner, kinds=body.kinds, expires_at=expires
    )
