"""Health checks: is this process up, and can it do its work now?

``GET /healthz`` answers 200 while the process serves at all (liveness: restart it when this
fails). ``GET /readyz`` runs the readiness checks of the process and answers 200 when all
pass, else 503 with every check's result (readiness: send it no traffic meanwhile):

- ``database``: the database answers (a connection, within a few seconds);
- ``schema``: it is at the revision this code needs (``studypub db upgrade`` otherwise);
- ``listener`` (PostgreSQL): the process's LISTEN connection is up, so that commits wake it;
- ``feed`` (an edge server): its stream is loaded and NATS reachable.

Every check is cheap and bounded: a probe every few seconds costs one connection checkout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate
from studypub.errors import SchemaNotMigrated, StudypubError

OK = "ok"
CHECK_TIMEOUT_S = 5.0

Checks = dict[str, str]  # check name -> "ok", or what is wrong


async def database_checks(engine: AsyncEngine) -> Checks:
    """``database`` and ``schema``, from one connection: reading the schema's revision is
    the database's answer too."""
    try:
        await asyncio.wait_for(migrate.require_current(engine), CHECK_TIMEOUT_S)
    except SchemaNotMigrated as exc:
        return {"database": OK, "schema": str(exc)}
    except TimeoutError:
        unavailable = f"unavailable: no answer within {CHECK_TIMEOUT_S:.0f} s"
        return {"database": unavailable, "schema": "unknown"}
    except (StudypubError, OSError) as exc:
        return {"database": f"unavailable: {exc or 'no answer'}", "schema": "unknown"}
    return {"database": OK, "schema": OK}


def listener_check(listening: asyncio.Event) -> Checks:
    """``listener``: the LISTEN connection of the process is up."""
    return {"listener": OK if listening.is_set() else "not connected: wake-ups only by polling"}


def ready(checks: Mapping[str, str]) -> bool:
    return all(result == OK for result in checks.values())
