"""studypub: publish study content from an authoring database to viewers.

Authoring writes enqueue payload snapshots into an outbox in the same transaction; a relay
publishes them into a compacted, gap-free change feed that viewers follow.
"""

__version__ = "0.1.0"
