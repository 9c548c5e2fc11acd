"""A guard around ``ast.parse`` for CPython 3.11 before 3.11.8.

Those versions can fail a parse at random with "SystemError: AST constructor recursion depth
mismatch" when a garbage collection runs finalizers in the middle of it
(python/cpython#106905). Hypothesis parses whole source files with ``ast.parse`` to describe
the lambdas of its strategies, schemathesis's included, so a long run of either meets it
sooner or later. The guard keeps the collector off during each parse; it is installed for
the test session (``tests/conftest.py``) and in schemathesis's runs (``contract/hooks.py``).
"""

from __future__ import annotations

import ast
import functools
import gc
import sys
from typing import Any

FIXED = (3, 11, 8)


def install() -> None:
    """Replace ``ast.parse`` by the guarded one (once; nothing on a fixed CPython)."""
    if sys.version_info >= FIXED or getattr(ast.parse, "guarded", False):
        return
    parse = ast.parse

    @functools.wraps(parse)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return parse(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    guarded.guarded = True  # type: ignore[attr-defined]
    ast.parse = guarded
