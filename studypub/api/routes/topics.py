"""``/v1/topics``: create, read, list, update and (soft) delete topics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from studypub import authoring
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes.common import (
    AUTHOR,
    BODY,
    DEFAULT_LIMIT,
    AfterId,
    IfMatch,
    Limit,
    RowId,
    errors,
    next_after_id,
    set_etag,
)
from studypub.api.schemas import TopicCreate, TopicPage, TopicPublic, TopicUpdate

router = APIRouter(prefix="/v1/topics", tags=["topics"], dependencies=AUTHOR)


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(*BODY))
async def create_topic(body: TopicCreate, session: SessionDep, response: Response) -> TopicPublic:
    topic = await authoring.create_topic(session, title=body.title, description=body.description)
    response.headers["Location"] = f"/v1/topics/{topic.id}"
    set_etag(response, topic)
    return TopicPublic.model_validate(topic)


@router.get("", responses=errors())
async def list_topics(
    session: ReadSessionDep, after_id: AfterId = 0, limit: Limit = DEFAULT_LIMIT
) -> TopicPage:
    rows = await authoring.list_topics(session, after_id=after_id, limit=limit)
    items = [TopicPublic.model_validate(row) for row in rows]
    return TopicPage(items=items, next_after_id=next_after_id(rows, limit))


@router.get("/{topic_id}", responses=errors(404))
async def get_topic(topic_id: RowId, session: ReadSessionDep, response: Response) -> TopicPublic:
    topic = await authoring.get_topic(session, topic_id)
    set_etag(response, topic)
    return TopicPublic.model_validate(topic)


@router.patch("/{topic_id}", responses=errors(404, 412, *BODY))
async def update_topic(
    topic_id: RowId,
    body: TopicUpdate,
    session: SessionDep,
    expected_version: IfMatch,
    response: Response,
) -> TopicPublic:
    topic = await authoring.update_topic(
        session,
        topic_id,
        expected_version=expected_version,
        title=body.title,
        description=body.description,
    )
    set_etag(response, topic)
    return TopicPublic.model_validate(topic)


@router.delete(
    "/{topic_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409, 412)
)
async def delete_topic(topic_id: RowId, session: SessionDep, expected_version: IfMatch) -> None:
    """Soft delete (a tombstone in the feed). Refused while live questions or cards remain."""
    await authoring.delete_topic(session, topic_id, expected_version=expected_version)
