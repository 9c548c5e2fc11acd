-- The relay's statements on PostgreSQL (loaded by studypub/sql/__init__.py).
--
-- One apply transaction is two round trips: claim_next, then publish. Lists are bound as
-- arrays (the claimed ids, the kinds this code publishes), so the text, and the cached plan,
-- never changes with the batch.

-- claim_next --
-- The due rows in id order, up to :limit. Rows another relay holds are skipped, not waited
-- for; the row locks last until commit, and die with the connection if the relay crashes (no
-- leases to expire).
--
-- The same statement takes a transaction-scoped advisory lock per claimed (kind, id), which
-- serializes relays per entity until commit. SELECT ... FOR UPDATE on published would lock
-- only the rows that exist: two relays could both find no row for a new key, decide on it,
-- and the later upsert would overwrite the newer version. The locks are only *tried*: an
-- entity another relay holds (an older outbox row of it in that relay's batch) is left out of
-- this batch, and its rows stay in the outbox for a later one. So a relay never waits for
-- another here: no lock order to keep, no deadlock, and a relay that stops while holding its
-- locks (SIGSTOP, a hung host; its transaction ends by the server's idle-in-transaction
-- timeout) does not stall the others. The lock CTE is MATERIALIZED so each lock is tried
-- exactly once. The published rows are read only after this statement, in a new statement,
-- so in a new READ COMMITTED snapshot that sees whatever the previous holder of a lock
-- committed.
--
-- The answer is one row: the hot path needs the ids, not the rows. Columns: the ids claimed
-- (entity locked), those of them of a kind not in :kinds (refused, see the relay), how many
-- due rows were left to another relay (skipped), and the age in seconds of the oldest row
-- claimed (the relay's lag metric).
WITH claimed AS (
    SELECT id, kind, source_id, enqueued_at,
           hashtextextended(kind || ':' || source_id, 0) AS k
    FROM outbox
    WHERE dead_at IS NULL AND available_at <= :now
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
locks AS MATERIALIZED (
    SELECT k, pg_try_advisory_xact_lock(k) AS mine FROM (SELECT DISTINCT k FROM claimed) AS keys
)
SELECT coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE l.mine), ARRAY[]::bigint[]),
       coalesce(array_agg(c.id ORDER BY c.id)
                    FILTER (WHERE l.mine AND NOT c.kind = ANY(CAST(:kinds AS text[]))),
                ARRAY[]::bigint[]),
       count(*) FILTER (WHERE NOT l.mine),
       extract(epoch FROM :now - min(c.enqueued_at) FILTER (WHERE l.mine))
FROM claimed c JOIN locks l ON l.k = c.k

-- claim_ids --
-- claim_next for the due rows among :ids (the relay retries the halves of a failed batch,
-- and counts a failure on one row, in transactions of their own). Same locks, same answer.
WITH claimed AS (
    SELECT id, kind, source_id, enqueued_at,
           hashtextextended(kind || ':' || source_id, 0) AS k
    FROM outbox
    WHERE dead_at IS NULL AND available_at <= :now AND id = ANY(CAST(:ids AS bigint[]))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
),
locks AS MATERIALIZED (
    SELECT k, pg_try_advisory_xact_lock(k) AS mine FROM (SELECT DISTINCT k FROM claimed) AS keys
)
SELECT coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE l.mine), ARRAY[]::bigint[]),
       coalesce(array_agg(c.id ORDER BY c.id)
                    FILTER (WHERE l.mine AND NOT c.kind = ANY(CAST(:kinds AS text[]))),
                ARRAY[]::bigint[]),
       count(*) FILTER (WHERE NOT l.mine),
       extract(epoch FROM :now - min(c.enqueued_at) FILTER (WHERE l.mine))
FROM claimed c JOIN locks l ON l.k = c.k

-- read_claimed --
-- The details of claimed rows, for the failure paths only (not the hot path).
SELECT id, kind, source_id, source_version, attempts
FROM outbox
WHERE id IN (SELECT unnest(CAST(:ids AS bigint[])))

-- publish --
-- The rest of the apply transaction, after the claim, in this one statement. Its snapshot is
-- taken after the claim locked the entities, so it decides on what the previous holders
-- committed. It deletes the claimed outbox rows of the kinds in :kinds (refused rows stay)
-- and decides on what it deleted, so the outbox is read once.
--
-- The verdict on each row (DESIGN "Relay apply transaction", steps 2 and 3):
-- - stale: coalesced away by a newer row of the same (kind, id) in the batch (the highest
--   (source_version, schema_version, id) wins), or older than the newest version the relay
--   has seen for the entity (published.latest_*);
-- - unchanged: same payload hash and deleted flag as the published row, or a tombstone of an
--   entity never published (stored with a NULL seq: never in the feed, but it refuses late
--   snapshots); no new seq and the feed entry stays as it is, but latest_* move forward, so
--   that a later stale snapshot with another payload cannot slip in below them;
-- - apply: everything else, which gets the next seqs in claim (outbox id) order.
-- The verdict names are studypub.store.Verdict's values.
--
-- The seqs come from the head row (with the feed NOTIFY, sent on commit), locked as late as
-- it can be, at the very end of the transaction (invariant 5: it stays locked until commit,
-- so the next relay waits for this commit, seqs become visible in commit order, and a
-- rollback gives them back). Nothing applied: the head row is not touched.
--
-- The published rows are written in one upsert, their payloads copied inside the database
-- from the deleted outbox rows. A NULL seq means "no new feed entry": on an existing row
-- (unchanged) the feed entry stays as it is and only latest_* move forward; on a new row (a
-- tombstone of an entity never published) the seq stays NULL.
--
-- The state checksums of the applied rows' (kind, scope) move in the same statement (see
-- studypub.checksums): each applied live entry adds its contribution, the live entry it
-- replaces subtracts its own. Their rows are locked after the head row (the upsert reads
-- head.base for each row it writes), so every relay takes the two in the same order.
--
-- The answer: how many rows got each verdict.
WITH gone AS (
    DELETE FROM outbox o
    WHERE o.id = ANY(CAST(:claimed AS bigint[])) AND o.kind = ANY(CAST(:kinds AS text[]))
    RETURNING *
),
ranked AS (
    SELECT o.id, o.kind, o.source_id, o.source_version, o.schema_version, o.payload_hash,
           o.deleted, o.scope,
           row_number() OVER (PARTITION BY o.kind, o.source_id
                              ORDER BY o.source_version DESC, o.schema_version DESC, o.id DESC)
               AS rank
    FROM gone o
),
verdicts AS (
    SELECT r.id, r.kind, r.scope, r.payload_hash, r.deleted,
           p.hash AS old_hash, p.deleted AS old_deleted, p.scope AS old_scope, CASE
        WHEN r.rank > 1 THEN 'stale'
        WHEN p.kind IS NULL THEN CASE WHEN r.deleted THEN 'unchanged' ELSE 'apply' END
        WHEN (r.source_version, r.schema_version) < (p.latest_version, p.latest_schema_version)
            THEN 'stale'
        WHEN r.payload_hash = p.hash AND r.deleted = p.deleted THEN 'unchanged'
        ELSE 'apply'
    END AS verdict
    FROM ranked r LEFT JOIN published p ON p.kind = r.kind AND p.id = r.source_id
),
applied AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM verdicts WHERE verdict = 'apply'
),
head AS (
    UPDATE feed_head SET last_seq = last_seq + (SELECT count(*) FROM applied)
    WHERE id = 1 AND EXISTS (SELECT FROM applied)
    RETURNING last_seq - (SELECT count(*) FROM applied) AS base, pg_notify(:channel, '')
),
v AS (
    SELECT a.id AS oid, (SELECT base FROM head) + a.n AS seq FROM applied a
    UNION ALL
    SELECT id, NULL FROM verdicts WHERE verdict = 'unchanged'
),
written AS (
    INSERT INTO published (kind, id, version, schema_version, latest_version,
                           latest_schema_version, payload, hash, deleted, seq, published_at, scope)
    SELECT o.kind, o.source_id, o.source_version, o.schema_version, o.source_version,
           o.schema_version, o.payload, o.payload_hash, o.deleted, v.seq, :now, o.scope
    FROM v JOIN gone o ON o.id = v.oid
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
    RETURNING 1
),
contributions AS (  -- each hash parsed once; n: +1 added, -1 replaced
    SELECT kind, scope, 1 AS n, studypub_h64(payload_hash) AS h
    FROM verdicts WHERE verdict = 'apply' AND NOT deleted
    UNION ALL
    SELECT kind, old_scope, -1, studypub_h64(old_hash)
    FROM verdicts WHERE verdict = 'apply' AND old_hash IS NOT NULL AND NOT old_deleted
),
checksums AS (
    INSERT INTO feed_checksums AS c (kind, scope, entries, sum_hi, sum_lo, changed_seq)
    SELECT kind, scope, sum(n), sum(n * ((h >> 32) & 4294967295)), sum(n * (h & 4294967295)),
           (SELECT base FROM head) + (SELECT count(*) FROM applied)
    FROM contributions GROUP BY kind, scope
    ON CONFLICT (kind, scope) DO UPDATE SET
        entries = c.entries + excluded.entries,
        sum_hi = c.sum_hi + excluded.sum_hi,
        sum_lo = c.sum_lo + excluded.sum_lo,
        changed_seq = excluded.changed_seq
    RETURNING 1
)
SELECT verdict, count(*) FROM verdicts GROUP BY verdict
