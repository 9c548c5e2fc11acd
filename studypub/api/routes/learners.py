"""``/v1/learners/{learner}/cards/{card_id}``: a learner's deck, reviews and suspensions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import JSONResponse

from studypub import scheduling
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes.common import (
    AUTHORING,
    BODY,
    IdempotencyKey,
    IfMatch,
    RowId,
    created,
    errors,
    idempotent,
    run_once,
    versioned,
)
from studypub.api.schemas import ProgressPublic, ReviewCreate
from studypub.scheduling import MAX_LEARNER

router = APIRouter(prefix="/v1/learners", tags=["learners"], dependencies=AUTHORING)

Learner = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_LEARNER,
        pattern=f"^{scheduling.LEARNER_PATTERN.pattern}$",
        description="Letters, digits, '.', '_', '@', '-'; starts with a letter or digit.",
    ),
]


@router.post(
    "/{learner}/cards/{card_id}",
    status_code=status.HTTP_201_CREATED,
    responses=errors(404, 409),
)
async def add_card_to_deck(
    learner: Learner, card_id: RowId, session: SessionDep, response: Response
) -> ProgressPublic:
    """Add an approved card to the learner's deck: ``new``, not scheduled until reviewed."""
    progress = await scheduling.add_card_to_deck(session, card_id, learner)
    return created(response, progress, ProgressPublic, f"/v1/learners/{learner}/cards/{card_id}")


@router.get("/{learner}/cards/{card_id}", responses=errors(404))
async def get_progress(
    learner: Learner, card_id: RowId, session: ReadSessionDep, response: Response
) -> ProgressPublic:
    progress = await scheduling.get_progress(session, card_id, learner)
    return versioned(response, progress, ProgressPublic)


@router.post(
    "/{learner}/cards/{card_id}/reviews",
    response_model=ProgressPublic,
    responses=idempotent(errors(404, 409, 412, *BODY)),
)
async def rate_card(
    learner: Learner,
    card_id: RowId,
    body: ReviewCreate,
    session: SessionDep,
    expected_version: IfMatch,
    key: IdempotencyKey,
    request: Request,
    response: Response,
) -> ProgressPublic | JSONResponse:
    """Record a review; FSRS schedules the next one (``due_at``).

    A review is not idempotent (each one advances the schedule): a client that may resend it
    after a lost response sends an ``Idempotency-Key``, and ``If-Match`` to refuse a review
    given on a state it has not seen.
    """

    async def review() -> ProgressPublic:
        progress = await scheduling.rate_card(
            session,
            card_id,
            learner,
            body.rating,
            body.reviewed_at,
            expected_version=expected_version,
        )
        return versioned(response, progress, ProgressPublic)

    return await run_once(session, key, request, response, review)


@router.post("/{learner}/cards/{card_id}/suspend", responses=errors(404, 409))
async def suspend_card(
    learner: Learner, card_id: RowId, session: SessionDep, response: Response
) -> ProgressPublic:
    """The learner sets the card aside for good (terminal, not scheduled)."""
    progress = await scheduling.suspend_card(session, card_id, learner)
    return versioned(response, progress, ProgressPublic)
