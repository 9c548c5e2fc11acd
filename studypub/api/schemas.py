"""Request and response bodies of the API: authoring, and the shapes of the feed.

Requests are strict: unknown fields are refused and every text has a length limit (the same
limits the service layer enforces, so the OpenAPI schema tells clients the truth). In a PATCH
body a field left out is left as it is; ``null`` is refused except where it is a value
(a card's ``question_id``: unlink).

The feed's responses are encoded straight from the rows (:func:`studypub.feed.page_json`);
its models here only describe them in OpenAPI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

from studypub import tokens
from studypub.authoring import MAX_CHOICE, MAX_CHOICES, MAX_TEXT, MAX_TITLE, MIN_CHOICES
from studypub.projection import KINDS
from studypub.scheduling import LEARNER_PATTERN, MAX_LEARNER, ReviewRating

# The largest id a request may name: JavaScript's largest exact integer (ids come from the
# database's counters and never get near it). Past it, a JSON number is not exact in a
# browser, nor in the float comparisons of many JSON Schema validators.
MAX_ID = 2**53 - 1
# PostgreSQL cannot store NUL (U+0000) in text or JSON: no text may hold one. Text
# that must not be blank has a character that is not a space, as the service
# layer decides it (``str.strip``): spelled out, since ``\s`` differs between Python and the
# ECMA regexes of JSON Schema.
_SPACES = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = rf"^[^\x00]*[^\x00{_SPACES}][^\x00]*$"
assert {c for c in range(0x3001) if not re.fullmatch(NOT_BLANK, chr(c))} == {
    c for c in range(0x3001) if chr(c).isspace() or c == 0
}, "NOT_BLANK must refuse exactly NUL and the characters str.strip removes"


def _number(value: Any) -> Any:
    """A JSON Schema integer is a number (``5`` or ``5.0``): not ``"5"``, not ``true``,
    which pydantic would otherwise take for one."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


NUMBER = BeforeValidator(_number)  # last in an Annotated: it runs before the constraints
Id = Annotated[int, Field(ge=1, le=MAX_ID), NUMBER]
Title = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE, pattern=NOT_BLANK)]
Description = Annotated[str, StringConstraints(max_length=MAX_TEXT, pattern=NO_NUL)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT, pattern=NOT_BLANK)]
Choice = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHOICE, pattern=NOT_BLANK)]
Choices = Annotated[
    list[Choice],
    Field(min_length=MIN_CHOICES, max_length=MAX_CHOICES, json_schema_extra={"uniqueItems": True}),
]
# Optional in a PATCH, but not nullable: the schema shows only the value type.
Absent = SkipJsonSchema[None]


class Kind(StrEnum):
    """The kinds of entity the feed carries (one component of the OpenAPI document, so a
    generated client has one type for them)."""

    TOPIC = "topic"
    QUESTION = "question"
    EXPLANATION = "explanation"
    CARD = "card"
    CARD_PROGRESS = "card_progress"


assert tuple(Kind) == KINDS, "Kind must list projection.KINDS"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptionalFields(Request):
    """A body with optional fields: one left out is not given (in a PATCH: left as it is), but
    ``null`` is not a value, except in the fields ``_nullable`` names."""

    @field_validator("*", mode="after")
    @classmethod
    def _not_null(cls, value: Any, info: Any) -> Any:
        # Only runs for fields the client sent (defaults are not validated).
        if value is None and info.field_name not in cls._nullable():
            raise ValueError("may be left out but not null")
        return value

    @classmethod
    def _nullable(cls) -> frozenset[str]:
        return frozenset()


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorPublic(BaseModel):
    """Every error: a stable machine code and a human-readable detail."""

    error: str = Field(examples=["not_found"])
    detail: Any = Field(default=None, examples=["topic 7 not found"])


Item = TypeVar("Item", bound=Public)


class ListPage(BaseModel, Generic[Item]):
    """A keyset page of a list route (``?after_id=&limit=``)."""

    items: list[Item]
    next_after_id: int | None = Field(description="Pass as after_id for the next page.")

    @classmethod
    def of(cls, rows: Sequence[Any], limit: int) -> Self:
        """The page of ``rows`` read with ``limit``: a full page may have a successor, a
        short one is the last."""
        next_after_id = rows[-1].id if len(rows) == limit else None
        return cls.model_validate({"items": rows, "next_after_id": next_after_id})


# ---------------------------------------------------------------- topics


class TopicCreate(Request):
    title: Title
    description: Description = ""


class TopicUpdate(OptionalFields):
    title: Title | Absent = None
    description: Description | Absent = None


class TopicPublic(Public):
    id: int
    title: str
    description: str
    version: int
    created_at: datetime
    updated_at: datetime


class TopicPage(ListPage[TopicPublic]):
    pass


# ---------------------------------------------------------------- questions


class QuestionCreate(Request):
    topic_id: Id
    stem: LongText
    choices: Choices
    answer: Choice = Field(description="One of the choices.")


class QuestionUpdate(OptionalFields):
    topic_id: Id | Absent = None
    stem: LongText | Absent = None
    choices: Choices | Absent = None
    answer: Choice | Absent = None


class QuestionPublic(Public):
    id: int
    topic_id: int
    stem: str
    choices: list[str]
    answer: str
    explanation: str | None
    explanation_status: Literal["pending", "ready", "failed"]
    explanation_error: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class QuestionPage(ListPage[QuestionPublic]):
    pass


class ExplanationPut(OptionalFields):
    """The explanation worker's result.

    ``{"body": ...}`` (status ``ready``, the default) publishes the explanation;
    ``{"status": "failed", "error": ...}`` records a failure and ``{"status": "pending"}``
    asks for it to be written again: both withdraw a published explanation.
    """

    status: Literal["ready", "failed", "pending"] = "ready"
    body: LongText | Absent = None
    error: LongText | Absent = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """One shape per status, as :meth:`_fields_of_status` checks them: generated clients
        and schema-driven tests then know which fields go together."""
        reference = handler(core_schema)
        schema = handler.resolve_ref_schema(reference)
        fields = schema.pop("properties")
        schema.pop("required", None)
        schema.pop("additionalProperties", None)

        def shape(status: str, field: str | None, status_required: bool) -> dict[str, Any]:
            properties: dict[str, Any] = {"status": {"const": status}}
            if field is not None:
                properties[field] = {k: v for k, v in fields[field].items() if k != "default"}
            required = [name for name in (status_required and "status", field) if name]
            return {
                "title": f"Explanation{status.title()}",
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }

        schema["oneOf"] = [
            shape("ready", "body", status_required=False),
            shape("failed", "error", status_required=True),
            shape("pending", None, status_required=True),
        ]
        return reference

    @model_validator(mode="after")
    def _fields_of_status(self) -> ExplanationPut:
        wanted = {"ready": "body", "failed": "error", "pending": None}[self.status]
        for field in ("body", "error"):
            given = getattr(self, field) is not None
            if given != (field == wanted):
                needs = f"needs '{wanted}'" if wanted else "takes neither 'body' nor 'error'"
                raise ValueError(f"status {self.status!r} {needs}")
        return self


# ---------------------------------------------------------------- cards


class CardCreate(Request):
    topic_id: Id
    front: LongText
    back: LongText
    question_id: Id | None = Field(default=None, description="A question of the same topic.")


class CardUpdate(OptionalFields):
    topic_id: Id | Absent = None
    question_id: Id | None = Field(default=None, description="null unlinks the question.")
    front: LongText | Absent = None
    back: LongText | Absent = None

    @classmethod
    def _nullable(cls) -> frozenset[str]:
        return frozenset({"question_id"})


class CardPublic(Public):
    id: int
    topic_id: int
    question_id: int | None
    front: str
    back: str
    needs_review: bool = Field(description="In review: not published until approved.")
    retired_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class CardPage(ListPage[CardPublic]):
    pass


# ---------------------------------------------------------------- learners


class ReviewCreate(Request):
    rating: ReviewRating
    reviewed_at: AwareDatetime | None = Field(
        default=None, description="When the learner answered (default: now); with a time zone."
    )


class ProgressPublic(Public):
    id: int
    card_id: int
    learner: str
    state: Literal["new", "learning", "review", "relearning", "suspended", "retired"]
    step: int | None
    due_at: datetime | None = Field(description="null: not scheduled (new or terminal).")
    stability: float | None
    difficulty: float | None
    reps: int
    lapses: int
    last_review_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------- feed


class FeedEntry(BaseModel):
    seq: int
    kind: Kind
    id: int
    version: int
    schema_version: int
    deleted: bool = Field(description="A tombstone: the entity is gone (payload `{}`).")
    hash: str = Field(description="sha256 hex of the payload's canonical JSON.")
    payload: dict[str, Any]
    published_at: datetime


class KindChecksum(BaseModel):
    count: int = Field(description="Live entries of the kind (tombstones left out).")
    checksum: str = Field(
        pattern="^[0-9a-f]{16}$",
        description="Sums of the hashes' first and second 32 bits, each modulo 2^32, as"
        " 8 + 8 hex digits (docs/feed-protocol.md, 'State checksums').",
    )


class FeedPagePublic(BaseModel):
    results: list[FeedEntry]
    last_seq: str = Field(description="The cursor to resume from.")
    pending: int = Field(description="How many entries (of the requested kinds) follow.")
    checksums: dict[str, KindChecksum] | None = Field(
        default=None,
        description="Only at the head (pending 0): the state of what the page's reader holds"
        " once it applied every page up to here, per kind with live entries.",
    )


# ---------------------------------------------------------------- viewer tokens


class ViewerTokenCreate(Request):
    learner: str = Field(
        min_length=1,
        max_length=MAX_LEARNER,
        pattern=f"^{LEARNER_PATTERN.pattern}$",
        description="The learner whose progress the token sees (besides the shared content).",
    )
    ttl_s: Annotated[
        int,
        Field(
            ge=int(tokens.MIN_TTL.total_seconds()),
            le=int(tokens.MAX_TTL.total_seconds()),
            description="How long the token holds, in seconds (1 minute to 366 days).",
        ),
        NUMBER,
    ] = int(tokens.DEFAULT_TTL.total_seconds())
    kinds: list[Kind] | None = Field(
        default=None, min_length=1, description="The kinds it may read (default: all)."
    )


class ViewerTokenPublic(BaseModel):
    token: str = Field(description="Send it as `Authorization: Bearer <token>`.")
    learner: str
    kinds: list[Kind] | None
    expires_at: datetime
