"""``/v1/learners/{learner}/cards/{card_id}``: a learner's deck, reviews and suspensions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from studypub import scheduling
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes.common import AUTHOR, BODY, RowId, errors, set_etag
from studypub.api.schemas import ProgressPublic, ReviewCreate
from studypub.scheduling import MAX_LEARNER

router = APIRouter(prefix="/v1/learners", tags=["learners"], dependencies=AUTHOR)

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
    response.headers["Location"] = f"/v1/learners/{learner}/cards/{card_id}"
    set_etag(response, progress)
    return ProgressPublic.model_validate(progress)


@router.get("/{learner}/cards/{card_id}", responses=errors(404))
async def get_progress(
    learner: Learner, card_id: RowId, session: ReadSessionDep, response: Response
) -> ProgressPublic:
    progress = await scheduling.get_progress(session, card_id, learner)
    set_etag(response, progress)
    return ProgressPublic.model_validate(progress)


@router.post("/{learner}/cards/{card_id}/reviews", responses=errors(404, 409, *BODY))
async def rate_card(
    learner: Learner,
    card_id: RowId,
    body: ReviewCreate,
    session: SessionDep,
    response: Response,
) -> ProgressPublic:
    """Record a review; FSRS schedules the next one (``due_at``)."""
    progress = await scheduling.rate_card(session, card_id, learner, body.rating, body.reviewed_at)
    set_etag(response, progress)
    return ProgressPublic.model_validate(progress)


@router.post("/{learner}/cards/{card_id}/suspend", responses=errors(404, 409))
async def suspend_card(
    learner: Learner, card_id: RowId, session: SessionDep, response: Response
) -> ProgressPublic:
    """The learner sets the card aside for good (terminal, not scheduled)."""
    progress = await scheduling.suspend_card(session, card_id, learner)
    set_etag(response, progress)
    return ProgressPublic.model_validate(progress)
