"""Built-in sample content for ``studypub demo``: a few topics, questions, cards and progress.

The sample plays the part of content that existed before studypub published anything: it is
written straight into the authoring tables with no outbox rows, and ``demo`` publishes it with
a backfill, the way a real deployment adopts studypub. Everything is deterministic, so two
demo runs show the same page.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from studypub.models import CardProgress, ExplanationStatus, MemoCard, Question, Topic, utcnow
from studypub.scheduling import ReviewRating, apply_review

LEARNER = "ada"

# (country, capital, one-line note)
CAPITALS = [
    (
        "France",
        "Paris",
        "Paris has been the capital since the late 10th century, under Hugh Capet.",
    ),
    ("Germany", "Berlin", "Berlin became the capital of reunified Germany in 1990."),
    ("Italy", "Rome", "Rome has been Italy's capital since 1871, after unification."),
    ("Spain", "Madrid", "Philip II moved the royal court to Madrid in 1561."),
    ("Portugal", "Lisbon", "Lisbon is one of the oldest cities in Western Europe."),
    (
        "Netherlands",
        "Amsterdam",
        "Amsterdam is the constitutional capital; government sits in The Hague.",
    ),
    ("Belgium", "Brussels", "Brussels also hosts the main institutions of the European Union."),
    ("Austria", "Vienna", "Vienna was the seat of the Habsburg monarchy for centuries."),
    ("Poland", "Warsaw", "Warsaw replaced Kraków as capital around 1596."),
    ("Sweden", "Stockholm", "Stockholm is spread over fourteen islands."),
    ("Norway", "Oslo", "Oslo was called Christiania from 1624 to 1925."),
    ("Finland", "Helsinki", "Helsinki became the capital in 1812, under Russian rule."),
    ("Greece", "Athens", "Athens has been inhabited for more than 3,000 years."),
]

# (element, symbol, one-line note)
ELEMENTS = [
    ("Hydrogen", "H", "Hydrogen is the lightest and most abundant element in the universe."),
    ("Helium", "He", "Helium was first detected in the Sun's spectrum in 1868."),
    ("Carbon", "C", "Carbon forms the backbone of every organic molecule."),
    ("Nitrogen", "N", "Nitrogen makes up about 78 % of Earth's atmosphere."),
    ("Oxygen", "O", "Oxygen is the most abundant element in Earth's crust by mass."),
    ("Sodium", "Na", "Na comes from the Latin natrium."),
    ("Potassium", "K", "K comes from the Latin kalium."),
    ("Iron", "Fe", "Fe comes from the Latin ferrum."),
    ("Copper", "Cu", "Cu comes from the Latin cuprum, after Cyprus."),
    ("Silver", "Ag", "Ag comes from the Latin argentum."),
    ("Gold", "Au", "Au comes from the Latin aurum."),
    ("Lead", "Pb", "Pb comes from the Latin plumbum, which also gave us 'plumber'."),
    ("Tin", "Sn", "Sn comes from the Latin stannum."),
]

# (stem, answer, wrong choices, explanation, card front, card back)
SOLAR_SYSTEM = [
    (
        "Which planet is closest to the Sun?",
        "Mercury",
        ["Venus", "Mars", "Earth"],
        "Mercury orbits at about 0.39 AU from the Sun.",
        "Closest planet to the Sun",
        "Mercury",
    ),
    (
        "Which planet is the largest?",
        "Jupiter",
        ["Saturn", "Neptune", "Uranus"],
        "Jupiter is more than twice as massive as all other planets combined.",
        "Largest planet",
        "Jupiter",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars",
        ["Venus", "Mercury", "Jupiter"],
        "Iron oxide dust gives Mars its reddish colour.",
        "The Red Planet",
        "Mars",
    ),
    (
        "Which planet has the most prominent ring system?",
        "Saturn",
        ["Jupiter", "Uranus", "Neptune"],
        "Saturn's rings are mostly water ice.",
        "Planet with the brightest rings",
        "Saturn",
    ),
    (
        "Which planet is the hottest?",
        "Venus",
        ["Mercury", "Mars", "Jupiter"],
        "Venus' thick CO2 atmosphere traps heat: about 465 °C at the surface.",
        "Hottest planet",
        "Venus",
    ),
    (
        "Which planet rotates on its side?",
        "Uranus",
        ["Neptune", "Saturn", "Mars"],
        "Uranus' axis is tilted by about 98 degrees.",
        "Planet rolling on its side",
        "Uranus",
    ),
    (
        "How long does light from the Sun take to reach Earth?",
        "About 8 minutes",
        ["About 8 seconds", "About 8 hours", "About 1 second"],
        "At 1 AU, sunlight travels for about 499 seconds.",
        "Sunlight's trip to Earth",
        "About 8 minutes",
    ),
    (
        "What is the largest moon in the solar system?",
        "Ganymede",
        ["Titan", "Europa", "the Moon"],
        "Jupiter's Ganymede is even larger than the planet Mercury.",
        "Largest moon",
        "Ganymede",
    ),
    (
        "What is the outermost planet?",
        "Neptune",
        ["Uranus", "Pluto", "Saturn"],
        "Pluto was reclassified as a dwarf planet in 2006.",
        "Outermost planet",
        "Neptune",
    ),
    (
        "What separates the inner and outer planets?",
        "The asteroid belt",
        ["The Kuiper belt", "The Oort cloud", "The heliopause"],
        "The main asteroid belt lies between Mars and Jupiter.",
        "Between Mars and Jupiter",
        "The asteroid belt",
    ),
    (
        "Which planet has the shortest day?",
        "Jupiter",
        ["Earth", "Saturn", "Mars"],
        "Jupiter spins once in under 10 hours.",
        "Shortest day",
        "Jupiter (under 10 h)",
    ),
    (
        "What kind of star is the Sun?",
        "A yellow dwarf",
        ["A red giant", "A white dwarf", "A neutron star"],
        "The Sun is a G-type main-sequence star.",
        "The Sun's type",
        "G-type main-sequence (yellow dwarf)",
    ),
]

PYTHON = [
    (
        "What does len([1, 2, 3]) return?",
        "3",
        ["2", "4", "an error"],
        "len counts the items of a sequence.",
        "len([1, 2, 3])",
        "3",
    ),
    (
        "Which keyword defines a function?",
        "def",
        ["func", "lambda", "fn"],
        "lambda makes an anonymous function expression; def defines a named one.",
        "Keyword to define a function",
        "def",
    ),
    (
        "Which type is immutable?",
        "tuple",
        ["list", "dict", "set"],
        "Tuples cannot be changed after they are created.",
        "An immutable sequence",
        "tuple",
    ),
    (
        "What does 7 // 2 evaluate to?",
        "3",
        ["3.5", "4", "1"],
        "// is floor division.",
        "7 // 2",
        "3",
    ),
    (
        "What does 'abc'[::-1] give?",
        "'cba'",
        ["'abc'", "'c'", "an error"],
        "A slice with step -1 walks the string backwards.",
        "'abc'[::-1]",
        "'cba'",
    ),
    (
        "Which statement handles exceptions?",
        "try/except",
        ["catch", "rescue", "on error"],
        "Python spells it try/except, with optional else and finally.",
        "Handle an exception",
        "try/except",
    ),
    (
        "What is the value of bool([])?",
        "False",
        ["True", "None", "an error"],
        "Empty containers are falsy.",
        "bool([])",
        "False",
    ),
    (
        "Which builtin pairs items of two lists?",
        "zip",
        ["map", "pair", "join"],
        "zip stops at the shortest input (strict=True makes it check lengths).",
        "Pair up two lists",
        "zip",
    ),
    (
        "What does a generator function use to produce values?",
        "yield",
        ["return", "emit", "give"],
        "yield suspends the function and hands a value to the caller.",
        "Produce values lazily",
        "yield",
    ),
    (
        "Which method adds one item to a list?",
        "append",
        ["add", "push", "insert_end"],
        "list.append adds one item; extend adds every item of an iterable.",
        "Add one item to a list",
        "list.append",
    ),
    (
        "What is None's type?",
        "NoneType",
        ["null", "object", "void"],
        "None is the only instance of NoneType.",
        "type(None)",
        "NoneType",
    ),
    (
        "Which module handles dates and times?",
        "datetime",
        ["time_utils", "calendar2", "dates"],
        "datetime provides date, time, datetime and timedelta.",
        "Dates and times",
        "datetime",
    ),
]


@dataclass(frozen=True)
class SampleSummary:
    topics: int
    questions: int
    cards: int
    progress: int
    reviews: int


async def load_sample(session: AsyncSession) -> SampleSummary:
    """Write the sample into ``session`` (the caller commits). No outbox rows: see the module."""
    rng = random.Random(5)
    topics = [
        Topic(title="European capitals", description="Countries of Europe and their capitals."),
        Topic(title="Chemical elements", description="Element names and their symbols."),
        Topic(title="The solar system", description="Planets, moons and the Sun."),
        Topic(title="Python basics", description="The core language in small steps."),
    ]
    session.add_all(topics)
    await session.flush()
    capitals, elements, solar, python = topics

    pairs: list[tuple[Topic, str, str, list[str], str, str, str]] = []
    all_capitals = [c[1] for c in CAPITALS]
    for country, capital, note in CAPITALS:
        wrong = rng.sample([c for c in all_capitals if c != capital], 3)
        pairs.append(
            (capitals, f"What is the capital of {country}?", capital, wrong, note, country, capital)
        )
    all_symbols = [e[1] for e in ELEMENTS]
    for element, symbol, note in ELEMENTS:
        wrong = rng.sample([s for s in all_symbols if s != symbol], 3)
        pairs.append(
            (elements, f"What is the symbol of {element}?", symbol, wrong, note, element, symbol)
        )
    for topic, rows in ((solar, SOLAR_SYSTEM), (python, PYTHON)):
        for stem, answer, wrong_choices, note, front, back in rows:
            pairs.append((topic, stem, answer, list(wrong_choices), note, front, back))

    questions: list[Question] = []
    cards: list[MemoCard] = []
    for n, (topic, stem, answer, wrong, note, _front, _back) in enumerate(pairs):
        choices = [answer, *wrong]
        rng.shuffle(choices)
        # Every tenth explanation is still being written: the viewer shows it as not ready.
        ready = n % 10 != 9
        question = Question(
            topic_id=topic.id,
            stem=stem,
            choices=choices,
            answer=answer,
            explanation=note if ready else None,
            explanation_status=(ExplanationStatus.READY if ready else ExplanationStatus.PENDING),
        )
        questions.append(question)
    session.add_all(questions)
    await session.flush()
    for n, (question, (topic, *_rest, front, back)) in enumerate(
        zip(questions, pairs, strict=True)
    ):
        # Most cards are approved; every eighth one still waits for review (not published).
        cards.append(
            MemoCard(
                topic_id=topic.id,
                question_id=question.id,
                front=front,
                back=back,
                needs_review=n % 8 == 7,
            )
        )
    session.add_all(cards)
    await session.flush()

    progress, reviews = await _learner_progress(session, cards, rng)
    return SampleSummary(
        topics=len(topics),
        questions=len(questions),
        cards=len(cards),
        progress=progress,
        reviews=reviews,
    )


async def _learner_progress(
    session: AsyncSession, cards: list[MemoCard], rng: random.Random
) -> tuple[int, int]:
    """One learner who started two weeks ago: some cards reviewed a few times, some never."""
    approved = [card for card in cards if not card.needs_review][:20]
    rows = [CardProgress(card_id=card.id, learner=LEARNER) for card in approved]
    session.add_all(rows)
    await session.flush()
    start = utcnow() - timedelta(days=14)
    reviews = 0
    for n, row in enumerate(rows):
        when = start + timedelta(hours=n)
        for _ in range(n % 4):  # 0 to 3 reviews; rows with 0 stay "new" (due_at NULL)
            rating = rng.choice(
                [ReviewRating.GOOD, ReviewRating.GOOD, ReviewRating.EASY, ReviewRating.HARD]
            )
            apply_review(row, rating, when)
            reviews += 1
            # The next review when it falls due, but never in the future.
            when = min(max(when + timedelta(hours=1), row.due_at or when), utcnow())
        await session.flush()
    return len(rows), reviews
