"""Fixtures of the fault suite: a throwaway PostgreSQL cluster and real ``studypub`` processes.

The fault tests restart PostgreSQL and kill or freeze relays, so they never touch a shared
server: ``pg_cluster`` runs ``initdb`` into a temporary directory (trust auth, user
``postgres``, a free loopback port, its unix socket inside the directory), starts it with
``pg_ctl`` and, whatever happens, stops it and removes the directory at the end
(``STUDYPUB_FAULTS_KEEP=1`` keeps the directory, for debugging). Without PostgreSQL binaries
the suite is skipped locally and fails under ``CI=true``: CI must never pass without it.

``procs`` starts the venv's ``studypub`` as subprocesses pointed at the cluster, each writing
its stdout and stderr to files, and stops them all before the cluster stops. When a test
fails, the tail of every process log and of the PostgreSQL log is attached to its report.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Generator, Iterator

import asyncpg
import pytest

from .fault_cluster import (
    AUTHOR_TOKEN,
    DATABASE,
    STUDYPUB,
    PgCluster,
    Procs,
    free_port,
    make_base_dir,
    pg_bindir,
)

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KEEP = os.environ.get("STUDYPUB_FAULTS_KEEP", "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql_only: runs on PostgreSQL alone (no SQLite half)")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A running throwaway cluster with the database ``studypub`` created."""
    bindir = pg_bindir()
    if bindir is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found; set STUDYPUB_TEST_PG_BIN"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    base, as_owner = make_base_dir()
    cluster = PgCluster(bindir, base, as_owner=as_owner)
    try:
        cluster.init()
        for attempt in range(3):  # the free port may be taken before the server binds it
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        asyncio.run(_admin(cluster.dsn("postgres"), f'CREATE DATABASE "{DATABASE}"'))
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if KEEP:
                print(f"\nfault suite files kept in {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url(pg_cluster: PgCluster) -> str:
    """The cluster's ``studypub`` database, migrated by ``studypub db upgrade``."""
    url = pg_cluster.url()
    done = subprocess.run(
        [STUDYPUB, "db", "upgrade", "--database-url", url],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    return url


@pytest.fixture(scope="module")
def procs(pg_cluster: PgCluster, database_url: str) -> Iterator[Procs]:
    """Starts ``studypub`` processes on the cluster's database (environment:
    STUDYPUB_DATABASE_URL, STUDYPUB_AUTHOR_TOKEN, STUDYPUB_VIEWER_TOKEN); stops them all at the
    end."""
    logs = pg_cluster.base / "logs"
    logs.mkdir()
    env = os.environ | {
        "STUDYPUB_DATABASE_URL": database_url,
        "STUDYPUB_AUTHOR_TOKEN": AUTHOR_TOKEN,
        "PYTHONUNBUFFERED": "1",  # log lines reach the files as they happen
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    # The feed's service token, shared by the server and `replicate` through the environment.
    env["STUDYPUB_VIEWER_TOKEN"] = "fault-viewer-token"
    starter = Procs(logs, env)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On the first failure of a module, attach the tail of every process log and of the
    PostgreSQL log."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    starter, cluster = funcargs.get("procs"), funcargs.get("pg_cluster")
    if not report.failed or not isinstance(starter, Procs) or starter.tails_shown:
        return report  # once per module is enough: every check reads the same run
    starter.tails_shown = True
    report.sections.append(("process logs (tails)", starter.tails()))
    if isinstance(cluster, PgCluster):
        report.sections.append(("PostgreSQL log (tail)", cluster.output_tail()))
    return report
