"""Configuration, read once from the environment (``STUDYPUB_*``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./studypub.db"


class Settings(BaseSettings):
    """All settings of studypub; every field has an env var ``STUDYPUB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="STUDYPUB_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    author_token: str | None = None
    viewer_token: str | None = None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
