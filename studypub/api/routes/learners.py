"""``/v1/learners/{learner}/cards/{card_id}``: a learner's deck, reviews and suspensions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import JSONResponse

from studypub import scheduling
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes import common
from studypub.api.schemas import ProgressPublic, ReviewCreate
from studypub.scheduling import MAX_LEARNER

router = APIRouter(prefix="/v1/learners", tags=["learners"], dependencies=common.AUTHORING)

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
    responses=common.errors(404, 409),
)
async def add_card_to_deck(
    learner: Learner, card_id: common.RowId, session: SessionDep, response: Response
) -> ProgressPublic:
    """Add an approved card to the learner's deck: ``new``, not scheduled until reviewed."""
    progress = await scheduling.add_card_to_deck(session, card_id, learner)
    return common.created(
        response, progress, ProgressPublic, f"/v1/learners/{learner}/cards/{card_id}"
    )


@router.get("/{learner}/cards/{card_id}", responses=common.errors(404))
async def get_progress(
    learner: Learner, card_id: common.RowId, session: ReadSessionDep, response: Response
) -> ProgressPublic:
    progress = await scheduling.get_progress(session, card_id, learner)
    return common.versioned(response, progress, ProgressPublic)


@router.post(
    "/{learner}/cards/{card_id}/reviews",
    response_model=ProgressPublic,
    responses=common.idempotent(common.errors(404, 409, 412, *common.BODY)),
)
async def rate_card(
    learner: Learner,
    card_id: common.RowId,
    body: ReviewCreate,
    session: SessionDep,
    expected_version: common.IfMatch,
    key: common.IdempotencyKey,
    request: Request,
    response: Response,
) -> ProgressPublic | JSONResponse:
    """Record a review; FSRS schedules the next one (``due_at``).

    A review is not common.idempotent (each one advances the schedule): a client that may resend it
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
        return common.versioned(response, progress, ProgressPublic)

    return await common.run_once(session, key, request, response, review)


@router.post("/{learner}/cards/{card_id}/suspend", responses=common.errors(404, 409))
async def suspend_card(
    learner: Learner, card_id: common.RowId, session: SessionDep, response: Response
) -> ProgressPublic:
    """The learner sets the card aside for good (terminal, not scheduled)."""
    progress = await scheduling.suspend_card(session, card_id, learner)
    return common.versioned(response, progress, ProgressPublic)
