"""``studypub token issue``: the token alone on stdout, accepted by a server sharing the key;
one-line errors for bad input, and nothing on stdout then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import tokens
from tests.support.cli import cli
from tests.support.http import TOKEN_SECRET, VIEWER_TOKEN, app_client, bearer


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tokens.SECRET_ENV, TOKEN_SECRET)


def test_issue_prints_the_token_alone() -> None:
    result = cli("token", "issue", "--learner", "ana", "--ttl", "2h", "--kinds", "card,topic")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert tokens.verify(TOKEN_SECRET, token) == tokens.Viewer("ana", ("card", "topic"))
    claims = jwt.decode(token, options={"verify_signature": False})
    lives = datetime.fromtimestamp(claims["exp"], UTC) - datetime.fromtimestamp(claims["iat"], UTC)
    assert lives == timedelta(hours=2)


async def test_a_server_with_the_same_key_accepts_it(engine: AsyncEngine) -> None:
    token = cli("token", "issue", "--learner", "ana").stdout.strip()
    async with app_client(engine, viewer_token=VIEWER_TOKEN) as client:
        assert (await client.get("/v1/feed", headers=bearer(token))).status_code == 200
        other = tokens.issue("another-key-of-at-least-32-characters!", "ana")[0]
        response = await client.get("/v1/feed", headers=bearer(other))
        assert response.status_code == 401 and "signature" in response.json()["detail"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learner", "a b"], "learner 'a b' is not a valid id"),
        (["--learner", "ana", "--ttl", "3y"], "invalid duration '3y'"),
        (["--learner", "ana", "--ttl", "400d"], "a token lives 1 minute to 366 days"),
        (["--learner", "ana", "--kinds", "topic,secrets"], "unknown kind 'secrets'"),
        (["--learner", "ana", "--kinds", ","], "--kinds is empty"),
    ],
)
def test_bad_input_is_one_line_and_no_token(args: list[str], message: str) -> None:
    result = cli("token", "issue", *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_without_a_key_it_says_which_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tokens.SECRET_ENV)
    result = cli("token", "issue", "--learner", "ana")
    assert result.exit_code == 1 and result.stdout == ""
    assert "STUDYPUB_TOKEN_SECRET is not set" in result.stderr
    monkeypatch.setenv(tokens.SECRET_ENV, "short")
    result = cli("token", "issue", "--learner", "ana")
    assert result.exit_code == 1 and "at least 32 characters" in result.stderr
