"""The whole API against its own OpenAPI document, checked as a new user would check it:
``studypub serve`` on each database, then schemathesis's ``st run`` with every check and the
coverage, fuzzing and stateful phases (``contract/schemathesis.toml``: a fixed seed, the same
cases on every run, the stream left out), with the author token. Then the feed's operations
again with a learner's token, which sees less.

Any failure (a 5xx, or a status, header, content type or body the document does not declare,
a valid request refused or an invalid one accepted) fails the test with schemathesis's report.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import tokens
from tests.support.cli import served
from tests.support.databases import url_of
from tests.support.http import AUTHOR_TOKEN, TOKEN_SECRET

ROOT = Path(__file__).parents[2]  # the hooks load as tests.api.contract.hooks from here
CONFIG = Path(__file__).parent / "contract" / "schemathesis.toml"
ST = str(Path(sys.executable).with_name("st"))
# Enough for every operation's coverage cases and a real sample of the rest, in about a
# minute per database on a 2-core machine.
MAX_EXAMPLES = "15"


async def test_the_api_conforms_to_its_openapi_document(
    migrated: AsyncEngine, tmp_path: Path
) -> None:
    async with served(url_of(migrated), tmp_path / "serve.log") as url:
        report = await _st_run(url, AUTHOR_TOKEN)
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert re.search(rf"✅ {phase}\b", report), f"{phase} did not run and pass:\n{report}"
        links = re.search(r"API Links:\s+(\d+) covered", report)
        assert links and int(links[1]) >= 20, f"the stateful phase followed few links:\n{report}"

        learner, _ = tokens.issue(TOKEN_SECRET, "alice")
        feed = ("--include-path-regex", "^/v1/(feed|items/)", "--phases", "coverage,fuzzing")
        await _st_run(url, learner, *feed)


async def _st_run(url: str, token: str, *args: str) -> str:
    """``st run`` against ``url`` with ``token``: its report, asserted to find nothing."""
    argv = [
        ST,
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "2",
        *args,
    ]
    done = await asyncio.to_thread(
        subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12_000:]
    return report
