"""Configuration, read once from the environment (``STUDYPUB_*``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./studypub.db"


class Settings(BaseSettings):
    """All settings of studypub; every field has an env var ``STUDYPUB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="STUDYPUB_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    author_token: str | None = None
    # The service token of the feed: sees every learner's progress. Generated at start when
    # unset (like the author token), unless the feed is open on purpose (open_feed).
    viewer_token: str | None = None
    # Signs learners' viewer tokens (HS256, at least 32 characters); a server generates one
    # for itself when unset (tokens it issues then hold for that process only).
    token_secret: str | None = Field(default=None, min_length=32)
    # Anyone may read the whole feed, every learner's progress included: only on purpose.
    open_feed: bool = False
    # Newest feed entries each server process keeps in memory (see studypub.tail).
    feed_window: int = Field(default=10_000, ge=100, le=1_000_000)
    # How long a cache (a CDN, a proxy, a browser) may keep a full page below the head.
    # Keep it well below the tombstone retention (`studypub prune --older-than`, >= 1h).
    feed_cache_max_age: int = Field(default=60, ge=0, le=3_600)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
