"""Viewer tokens: who reads the feed, and which part of it.

A learner's app reads the feed with a signed, expiring token (a JWT, HS256, signed with
``STUDYPUB_TOKEN_SECRET`` by PyJWT) that names the learner and, optionally, the kinds it may
read. It sees the shared content and its own progress rows, never another learner's. The
service token (``STUDYPUB_VIEWER_TOKEN``, an opaque secret) and an open feed
(``STUDYPUB_OPEN_FEED``, on purpose only) see everything. A :class:`Viewer` is what a request
turned out to be allowed; the feed filters with it on every route.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from studypub.errors import Forbidden, InvalidInput, Unauthorized
from studypub.models import utcnow
from studypub.projection import KINDS, SHARED
from studypub.scheduling import check_learner

ALGORITHM = "HS256"
ISSUER = "studypub"
DEFAULT_TTL = timedelta(days=1)
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(days=366)
MIN_SECRET = 32
SECRET_ENV = "STUDYPUB_TOKEN_SECRET"


class InvalidToken(Unauthorized):
    """A viewer token that is expired, forged, signed with another key or malformed."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """What one reader of the feed may see.

    ``learner``: the learner whose progress it sees besides the shared content; None sees
    every learner's (the service token, an open feed). ``kinds``: the kinds it may read; None
    is all of them.
    """

    learner: str | None = None
    kinds: tuple[str, ...] | None = None

    @property
    def everything(self) -> bool:
        return self.learner is None and self.kinds is None

    def kinds_for(self, asked: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The kinds a read of ``asked`` (None: all) returns to this viewer."""
        if self.kinds is None:
            return asked
        if asked is None:
            return self.kinds
        refused = [kind for kind in asked if kind not in self.kinds]
        if refused:
            raise Forbidden(
                f"this token does not allow kind {', '.join(map(repr, refused))}: "
                f"it allows {', '.join(self.kinds)}"
            )
        return asked

    def sees(self, kind: str, scope: str) -> bool:
        """Whether an entry of ``kind`` in ``scope`` is this viewer's to see."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        return scope == SHARED or self.learner is None or scope == self.learner


SERVICE = Viewer()


def new_secret() -> str:
    """A random signing key, for a server started without ``STUDYPUB_TOKEN_SECRET``."""
    return secrets.token_urlsafe(MIN_SECRET)


def check_secret(secret: str | None) -> str:
    if not secret or len(secret) < MIN_SECRET:
        raise InvalidInput(
            f"STUDYPUB_TOKEN_SECRET must be set to at least {MIN_SECRET} characters to sign"
            " viewer tokens (e.g. the output of `openssl rand -base64 32`)"
        )
    return secret


def issue(
    secret: str,
    learner: str,
    *,
    ttl: timedelta = DEFAULT_TTL,
    kinds: Sequence[str] | None = None,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    """A viewer token for ``learner`` and when it expires."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInput(
            f"a token lives 1 minute to 366 days, not {ttl.total_seconds() / 86_400:g} days"
        )
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise InvalidInput(
            f"unknown kind {', '.join(map(repr, unknown))}: allowed kinds are {', '.join(KINDS)}"
        )
    check_learner(learner)
    now = now or utcnow()
    expires = now + ttl
    claims: dict[str, object] = {"iss": ISSUER, "sub": learner, "iat": now, "exp": expires}
    if kinds:
        claims["kinds"] = list(dict.fromkeys(kinds))
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM), expires


def verify(secret: str, token: str) -> Viewer:
    """The :class:`Viewer` of a learner's token, or :class:`InvalidToken` saying why not."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the viewer token has expired: get a new one") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken(
            "the viewer token's signature does not verify (forged, or signed with another key)"
        ) from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid viewer token: {exc}") from None
    learner, kinds = claims["sub"], claims.get("kinds")
    if not isinstance(learner, str) or not learner:
        raise InvalidToken("invalid viewer token: no learner")
    if kinds is not None and (
        not isinstance(kinds, list) or not kinds or not set(kinds) <= set(KINDS)
    ):
        raise InvalidToken("invalid viewer token: its kinds are not a list of known kinds")
    return Viewer(learner=learner, kinds=None if kinds is None else tuple(kinds))
