"""Schemathesis hooks for studypub's API (loaded by ``schemathesis.toml`` beside this file).

A question's ``answer`` must be one of its ``choices``: a rule between two fields that JSON
Schema cannot state, so the schema describes it in words. Requests generated as valid are
made to follow it; requests generated to be invalid are left alone.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import Case, GenerationMode

from tests.support import ast_guard

ast_guard.install()  # schemathesis runs hypothesis, which parses sources (see the module)

QUESTION_BODIES = {("POST", "/v1/questions"), ("PATCH", "/v1/questions/{question_id}")}


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Case) -> Case:
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    if (case.method, case.path) in QUESTION_BODIES:
        _answer_one_of_the_choices(case.body)
    return case


def _answer_one_of_the_choices(body: Any) -> None:
    given = isinstance(body, dict) and body.get("choices") and "answer" in body
    if given and body["answer"] not in body["choices"]:
        body["answer"] = body["choices"][0]
