"""Plain helpers of the tests, one module per concern; fixtures live in ``conftest.py`` files.

- ``databases``: the PostgreSQL admin URL, ``PG_ONLY``, emptying a test database
- ``seed``: source rows inserted as they are (no outbox rows)
- ``writes``: ORM writes with their outbox rows, below the service layer
- ``content``: content written through the service layer, as authors write it
- ``outbox``: reading and clearing the outbox, backfill pages and checkpoints
- ``state``: what the sources say, what the relay decided, what the feed shows; a consumer
- ``triggers``: database triggers that audit every seq or refuse a payload
- ``apply_rule``: the consumers' apply rule as an oracle and a table of cases
- ``http``: the app under test, in-process clients, feed reads and SSE parsing
- ``cli``: the ``studypub`` command, in process and as a subprocess; ``served``: a live
  ``studypub serve``
- ``nats``: the NATS server of the bridge and edge tests, and one of a test's own
- ``signals``: a stand-in for the signal handlers a test replaces
- ``ast_guard``: ``ast.parse`` kept safe from CPython 3.11.7's bug, for hypothesis
"""
