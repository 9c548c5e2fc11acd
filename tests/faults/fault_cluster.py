"""The machinery of the fault suite: a PostgreSQL cluster of its own and ``studypub``
processes with their output in files (the fixtures in conftest.py build on these).

The cluster lives under a temporary directory (data, unix socket, logs), on a free loopback
port, so restarting it disturbs nothing else. As root, every PostgreSQL binary runs as the
``postgres`` user through ``runuser`` (PostgreSQL refuses to run as root).

pg_ctl never writes to a pipe: the postmaster inherits pg_ctl's stdout and stderr, and a
caller reading a pipe would wait for it forever. Its output goes to a file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STUDYPUB = str(Path(sys.executable).with_name("studypub"))
AUTHOR_TOKEN = "fault-suite-author"
DATABASE = "studypub"
TAIL_LINES = 40


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: STUDYPUB_TEST_PG_BIN, PATH, or the Debian layout."""
    candidates = [os.environ.get("STUDYPUB_TEST_PG_BIN", "")]
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def make_base_dir() -> tuple[Path, list[str]]:
    """A temp dir PostgreSQL may own, and the prefix that runs a command as its owner: as
    root, the dir is chowned to ``postgres`` and commands go through runuser."""
    base = Path(tempfile.mkdtemp(prefix="studypub-faults-"))
    if os.geteuid() != 0:
        return base, []
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        shutil.rmtree(base)
        raise RuntimeError("running as root but there is no 'postgres' user") from None
    os.chown(base, owner.pw_uid, owner.pw_gid)
    return base, ["runuser", "-u", "postgres", "--"]


@dataclass
class PgCluster:
    """A PostgreSQL cluster under ``base`` (data, socket, logs)."""

    bindir: Path
    base: Path
    port: int = 0
    as_owner: list[str] = field(default_factory=list)  # e.g. ["runuser", "-u", "postgres", "--"]

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgresql.log"

    def url(self, database: str = DATABASE) -> str:
        """SQLAlchemy URL, as studypub takes it."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = DATABASE) -> str:
        """asyncpg DSN of an admin connection (user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        sock = self.base / "sock"
        sock.mkdir()
        owner = self.base.stat()
        os.chown(sock, owner.st_uid, owner.st_gid)  # the server creates its socket there
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))

    def output_tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{tail(path)}"
            for path in (self.base / "pg_ctl.out", self.log)
            if path.exists()
        )

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run(
            "pg_ctl", action, *args, "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.log), "-o", self._options(),
        )  # fmt: skip

    def _options(self) -> str:
        return " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.base / 'sock'}",
                # Throwaway data: no durability needed (a fast restart still checkpoints).
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            ]
        )

    def _run(self, program: str, *args: str, timeout: float = 90) -> None:
        with open(self.base / "pg_ctl.out", "ab") as out:  # a file, never a pipe
            done = subprocess.run(
                [*self.as_owner, str(self.bindir / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {done.returncode}:\n{self.output_tail()}"
            )


@dataclass
class Proc:
    """One ``studypub`` subprocess and the files its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def tails(self) -> str:
        state = "running" if self.running() else f"exited {self.popen.returncode}"
        return (
            f"===== {self.name} (pid {self.pid}, {state})\n"
            f"--- stdout\n{tail(self.out)}\n--- stderr\n{tail(self.err)}"
        )


class Procs:
    """Starts ``studypub`` processes, output to files under ``logs``; stops them all."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: list[Proc] = []
        self.tails_shown = False

    def start(self, name: str, *args: str) -> Proc:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            popen = subprocess.Popen(
                [STUDYPUB, *args],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
            )
        proc = Proc(name, popen, out, err)
        self.started.append(proc)
        return proc

    def run(self, name: str, *args: str, timeout: float = 120) -> tuple[int, str]:
        """Run a command to its end: (exit status, stdout and stderr)."""
        out = self.logs / f"{name}.log"
        with open(out, "wb") as output:
            done = subprocess.run(
                [STUDYPUB, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        return done.returncode, out.read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(proc.tails() for proc in self.started)

    def stop_all(self) -> None:
        """SIGTERM every process still running (SIGCONT first: a frozen one cannot stop),
        SIGKILL what has not exited 10 s later."""
        for proc in self.started:
            if proc.running():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGCONT)
                    proc.popen.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)
