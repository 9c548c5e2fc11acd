"""``/v1/questions``: questions and their explanations."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from studypub import authoring
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes import common
from studypub.api.schemas import (
    ExplanationPut,
    QuestionCreate,
    QuestionPage,
    QuestionPublic,
    QuestionUpdate,
)
from studypub.records import LIST_LIMIT

router = APIRouter(prefix="/v1/questions", tags=["questions"], dependencies=common.AUTHORING)


@router.post("", status_code=status.HTTP_201_CREATED, responses=common.errors(409, *common.BODY))
async def create_question(
    body: QuestionCreate, session: SessionDep, response: Response
) -> QuestionPublic:
    """A new question; its explanation is pending until ``PUT .../explanation``."""
    question = await authoring.create_question(
        session, topic_id=body.topic_id, stem=body.stem, choices=body.choices, answer=body.answer
    )
    return common.created(response, question, QuestionPublic, f"/v1/questions/{question.id}")


@router.get("", responses=common.errors())
async def list_questions(
    session: ReadSessionDep,
    after_id: common.AfterId = 0,
    limit: common.Limit = LIST_LIMIT,
    topic_id: common.TopicFilter = None,
) -> QuestionPage:
    rows = await authoring.list_questions(
        session, after_id=after_id, limit=limit, topic_id=topic_id
    )
    return QuestionPage.of(rows, limit)


@router.get("/{question_id}", responses=common.errors(404))
async def get_question(
    question_id: common.RowId, session: ReadSessionDep, response: Response
) -> QuestionPublic:
    question = await authoring.get_question(session, question_id)
    return common.versioned(response, question, QuestionPublic)


@router.patch("/{question_id}", responses=common.errors(404, 409, 412, *common.BODY))
async def update_question(
    question_id: common.RowId,
    body: QuestionUpdate,
    session: SessionDep,
    expected_version: common.IfMatch,
    response: Response,
) -> QuestionPublic:
    """Change the given fields; the answer must remain one of the choices."""
    question = await authoring.update_question(
        session,
        question_id,
        expected_version=expected_version,
        topic_id=body.topic_id,
        stem=body.stem,
        choices=body.choices,
        answer=body.answer,
    )
    return common.versioned(response, question, QuestionPublic)


@router.delete(
    "/{question_id}", status_code=status.HTTP_204_NO_CONTENT, responses=common.errors(404, 409, 412)
)
async def delete_question(
    question_id: common.RowId, session: SessionDep, expected_version: common.IfMatch
) -> None:
    """Soft delete, explanation included. Refused while live cards refer to the question."""
    await authoring.delete_question(session, question_id, expected_version=expected_version)


@router.put("/{question_id}/explanation", responses=common.errors(404, 412, *common.BODY))
async def put_explanation(
    question_id: common.RowId,
    body: ExplanationPut,
    session: SessionDep,
    expected_version: common.IfMatch,
    response: Response,
) -> QuestionPublic:
    """The explanation worker's result: ``{"body": ...}`` publishes the explanation;
    ``{"status": "failed", "error": ...}`` or ``{"status": "pending"}`` withdraws it."""
    if body.status == "ready" and body.body is not None:
        question = await authoring.complete_explanation(
            session, question_id, body.body, expected_version=expected_version
        )
    elif body.status == "failed" and body.error is not None:
        question = await authoring.fail_explanation(
            session, question_id, body.error, expected_version=expected_version
        )
    else:
        question = await authoring.reset_explanation(
            session, question_id, expected_version=expected_version
        )
    return common.versioned(response, question, QuestionPublic)
