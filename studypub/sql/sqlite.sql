-- The relay's statements on SQLite (loaded by studypub/sql/__init__.py).
--
-- The write session began with BEGIN IMMEDIATE, so the relay is the only writer: no row or
-- entity locks to take. SQLite has no UPDATE or DELETE in a WITH clause, so publish is a few
-- statements (in-process calls, not round trips), named publish.<step>. Lists are bound as
-- one JSON text and read with json_each, so the text never changes with the batch.

-- claim_next --
-- The due rows in id order, up to :limit, each with whether its kind is one in :kinds (the
-- others are refused, see the relay) and its age in seconds (the relay's lag metric).
SELECT id, kind IN (SELECT value FROM json_each(:kinds)) AS publishable,
       (julianday(:now) - julianday(enqueued_at)) * 86400.0 AS age
FROM outbox
WHERE dead_at IS NULL AND available_at <= :now
ORDER BY id LIMIT :limit

-- claim_ids --
-- claim_next for the due rows among :ids (the relay retries the halves of a failed batch,
-- and counts a failure on one row, in transactions of their own).
SELECT id, kind IN (SELECT value FROM json_each(:kinds)) AS publishable,
       (julianday(:now) - julianday(enqueued_at)) * 86400.0 AS age
FROM outbox
WHERE dead_at IS NULL AND available_at <= :now AND id IN (SELECT value FROM json_each(:ids))
ORDER BY id

-- read_claimed --
-- The details of claimed rows, for the failure paths only (not the hot path).
SELECT id, kind, source_id, source_version, attempts
FROM outbox
WHERE id IN (SELECT value FROM json_each(:ids))

-- publish.decide --
-- The verdict on each claimed row of a kind in :kinds (refused rows stay in the outbox),
-- against the published rows (DESIGN "Relay apply transaction", steps 2 and 3):
-- - stale: coalesced away by a newer row of the same (kind, id) in the batch (the highest
--   (source_version, schema_version, id) wins), or older than the newest version the relay
--   has seen for the entity (published.latest_*);
-- - unchanged: same payload hash and deleted flag as the published row, or a tombstone of an
--   entity never published (stored with a NULL seq: never in the feed, but it refuses late
--   snapshots); no new seq and the feed entry stays as it is, but latest_* move forward, so
--   that a later stale snapshot with another payload cannot slip in below them;
-- - apply: everything else, which gets the next seqs in claim (outbox id) order.
-- The verdict names are studypub.store.Verdict's values.
WITH ranked AS (
    SELECT o.id, o.kind, o.source_id, o.source_version, o.schema_version, o.payload_hash,
           o.deleted,
           row_number() OVER (PARTITION BY o.kind, o.source_id
                              ORDER BY o.source_version DESC, o.schema_version DESC, o.id DESC)
               AS rank
    FROM outbox o
    WHERE o.id IN (SELECT value FROM json_each(:claimed))
      AND o.kind IN (SELECT value FROM json_each(:kinds))
),
verdicts AS (
    SELECT r.id, CASE
        WHEN r.rank > 1 THEN 'stale'
        WHEN p.kind IS NULL THEN CASE WHEN r.deleted THEN 'unchanged' ELSE 'apply' END
        WHEN (r.source_version, r.schema_version) < (p.latest_version, p.latest_schema_version)
            THEN 'stale'
        WHEN r.payload_hash = p.hash AND r.deleted = p.deleted THEN 'unchanged'
        ELSE 'apply'
    END AS verdict
    FROM ranked r LEFT JOIN published p ON p.kind = r.kind AND p.id = r.source_id
)
SELECT id, verdict FROM verdicts

-- publish.take_seqs --
-- :n seqs from the head row, only when something applies; the last one given comes back.
-- The BEGIN IMMEDIATE writer lock keeps them in commit order until commit (invariant 5).
UPDATE feed_head SET last_seq = last_seq + :n WHERE id = 1 RETURNING last_seq

-- publish.checksums --
-- The state checksums of the applied rows' (kind, scope) (see studypub.checksums), before
-- the upsert replaces the published rows: each applied live entry adds its contribution, the
-- live entry it replaces subtracts its own. :applied is the applied outbox ids, :head the
-- feed head after them.
INSERT INTO feed_checksums (kind, scope, entries, sum_hi, sum_lo, changed_seq)
SELECT kind, scope, sum(n), sum(n * ((h >> 32) & 4294967295)), sum(n * (h & 4294967295)), :head
FROM (
    SELECT o.kind, o.scope, 1 AS n, studypub_h64(o.payload_hash) AS h
    FROM outbox o
    WHERE o.id IN (SELECT value FROM json_each(:applied)) AND NOT o.deleted
    UNION ALL
    SELECT p.kind, p.scope, -1, studypub_h64(p.hash)
    FROM outbox o JOIN published p ON p.kind = o.kind AND p.id = o.source_id
    WHERE o.id IN (SELECT value FROM json_each(:applied)) AND NOT p.deleted
)
WHERE true
GROUP BY kind, scope
ON CONFLICT (kind, scope) DO UPDATE SET
    entries = entries + excluded.entries,
    sum_hi = sum_hi + excluded.sum_hi,
    sum_lo = sum_lo + excluded.sum_lo,
    changed_seq = excluded.changed_seq

-- publish.upsert --
-- The published rows of a batch in one statement, their payloads copied inside the database
-- from the claimed outbox rows; :rows is [[outbox id, seq], ...]. A NULL seq means "no new
-- feed entry": on an existing row (unchanged) the feed entry stays as it is and only
-- latest_* move forward; on a new row (a tombstone of an entity never published) the seq
-- stays NULL. An INSERT ... SELECT with an upsert clause needs a WHERE (parsing ambiguity).
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at, scope)
SELECT o.kind, o.source_id, o.source_version, o.schema_version, o.source_version,
       o.schema_version, o.payload, o.payload_hash, o.deleted, v.seq, :now, o.scope
FROM (SELECT value ->> 0 AS oid, value ->> 1 AS seq FROM json_each(:rows)) AS v
JOIN outbox o ON o.id = v.oid
WHERE true
ON CONFLICT (kind, id) DO UPDATE SET
    latest_version = excluded.latest_version,
    latest_schema_version = excluded.latest_schema_version,
    version = CASE WHEN excluded.seq IS NULL
        THEN published.version ELSE excluded.version END,
    schema_version = CASE WHEN excluded.seq IS NULL
        THEN published.schema_version ELSE excluded.schema_version END,
    payload = CASE WHEN excluded.seq IS NULL THEN published.payload ELSE excluded.payload END,
    hash = excluded.hash, deleted = excluded.deleted, scope = excluded.scope,
    seq = COALESCE(excluded.seq, published.seq),
    published_at = CASE WHEN excluded.seq IS NULL
        THEN published.published_at ELSE excluded.published_at END

-- publish.delete_outbox --
-- Every claimed row that got a verdict leaves the outbox in the same transaction (invariant 2).
DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(:ids))
