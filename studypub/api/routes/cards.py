"""``/v1/cards``: memo cards and their review cycle (approve, back to review, retire)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from studypub import authoring
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes import common
from studypub.api.schemas import CardCreate, CardPage, CardPublic, CardUpdate
from studypub.records import LIST_LIMIT

router = APIRouter(prefix="/v1/cards", tags=["cards"], dependencies=common.AUTHORING)


@router.post("", status_code=status.HTTP_201_CREATED, responses=common.errors(409, *common.BODY))
async def create_card(body: CardCreate, session: SessionDep, response: Response) -> CardPublic:
    """A new card starts in review: it is published once approved."""
    card = await authoring.create_card(
        session,
        topic_id=body.topic_id,
        front=body.front,
        back=body.back,
        question_id=body.question_id,
    )
    return common.created(response, card, CardPublic, f"/v1/cards/{card.id}")


@router.get("", responses=common.errors())
async def list_cards(
    session: ReadSessionDep,
    after_id: common.AfterId = 0,
    limit: common.Limit = LIST_LIMIT,
    topic_id: common.TopicFilter = None,
) -> CardPage:
    rows = await authoring.list_cards(session, after_id=after_id, limit=limit, topic_id=topic_id)
    return CardPage.of(rows, limit)


@router.get("/{card_id}", responses=common.errors(404))
async def get_card(
    card_id: common.RowId, session: ReadSessionDep, response: Response
) -> CardPublic:
    card = await authoring.get_card(session, card_id)
    return common.versioned(response, card, CardPublic)


@router.patch("/{card_id}", responses=common.errors(404, 409, 412, *common.BODY))
async def update_card(
    card_id: common.RowId,
    body: CardUpdate,
    session: SessionDep,
    expected_version: common.IfMatch,
    response: Response,
) -> CardPublic:
    """Change the given fields (``"question_id": null`` unlinks). Retired cards are read-only."""
    question_id = body.question_id if "question_id" in body.model_fields_set else authoring.UNSET
    card = await authoring.update_card(
        session,
        card_id,
        expected_version=expected_version,
        topic_id=body.topic_id,
        question_id=question_id,
        front=body.front,
        back=body.back,
    )
    return common.versioned(response, card, CardPublic)


@router.delete(
    "/{card_id}", status_code=status.HTTP_204_NO_CONTENT, responses=common.errors(404, 412)
)
async def delete_card(
    card_id: common.RowId, session: SessionDep, expected_version: common.IfMatch
) -> None:
    """Soft delete; every learner's progress on the card is deleted with it."""
    await authoring.delete_card(session, card_id, expected_version=expected_version)


@router.post("/{card_id}/approve", responses=common.errors(404, 409, 412))
async def approve_card(
    card_id: common.RowId, session: SessionDep, expected_version: common.IfMatch, response: Response
) -> CardPublic:
    """Reviewed: publish the card. Approving an approved card changes nothing."""
    card = await authoring.approve_card(session, card_id, expected_version=expected_version)
    return common.versioned(response, card, CardPublic)


@router.post("/{card_id}/review", responses=common.errors(404, 409, 412))
async def send_card_to_review(
    card_id: common.RowId, session: SessionDep, expected_version: common.IfMatch, response: Response
) -> CardPublic:
    """Back to review: the published card becomes a tombstone until approved again."""
    card = await authoring.send_card_to_review(session, card_id, expected_version=expected_version)
    return common.versioned(response, card, CardPublic)


@router.post("/{card_id}/retire", responses=common.errors(404, 412))
async def retire_card(
    card_id: common.RowId, session: SessionDep, expected_version: common.IfMatch, response: Response
) -> CardPublic:
    """For good: a tombstone for the card; every learner's progress on it becomes ``retired``."""
    card = await authoring.retire_card(session, card_id, expected_version=expected_version)
    return common.versioned(response, card, CardPublic)
