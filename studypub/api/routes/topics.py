"""``/v1/topics``: create, read, list, update and (soft) delete topics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from studypub import authoring
from studypub.api.deps import ReadSessionDep, SessionDep
from studypub.api.routes import common
from studypub.api.schemas import TopicCreate, TopicPage, TopicPublic, TopicUpdate
from studypub.records import LIST_LIMIT

router = APIRouter(prefix="/v1/topics", tags=["topics"], dependencies=common.AUTHORING)


@router.post("", status_code=status.HTTP_201_CREATED, responses=common.errors(*common.BODY))
async def create_topic(body: TopicCreate, session: SessionDep, response: Response) -> TopicPublic:
    topic = await authoring.create_topic(session, title=body.title, description=body.description)
    return common.created(response, topic, TopicPublic, f"/v1/topics/{topic.id}")


@router.get("", responses=common.errors())
async def list_topics(
    session: ReadSessionDep, after_id: common.AfterId = 0, limit: common.Limit = LIST_LIMIT
) -> TopicPage:
    rows = await authoring.list_topics(session, after_id=after_id, limit=limit)
    return TopicPage.of(rows, limit)


@router.get("/{topic_id}", responses=common.errors(404))
async def get_topic(
    topic_id: common.RowId, session: ReadSessionDep, response: Response
) -> TopicPublic:
    topic = await authoring.get_topic(session, topic_id)
    return common.versioned(response, topic, TopicPublic)


@router.patch("/{topic_id}", responses=common.errors(404, 412, *common.BODY))
async def update_topic(
    topic_id: common.RowId,
    body: TopicUpdate,
    session: SessionDep,
    expected_version: common.IfMatch,
    response: Response,
) -> TopicPublic:
    topic = await authoring.update_topic(
        session,
        topic_id,
        expected_version=expected_version,
        title=body.title,
        description=body.description,
    )
    return common.versioned(response, topic, TopicPublic)


@router.delete(
    "/{topic_id}", status_code=status.HTTP_204_NO_CONTENT, responses=common.errors(404, 409, 412)
)
async def delete_topic(
    topic_id: common.RowId, session: SessionDep, expected_version: common.IfMatch
) -> None:
    """Soft delete (a tombstone in the feed). Refused while live questions or cards remain."""
    await authoring.delete_topic(session, topic_id, expected_version=expected_version)
