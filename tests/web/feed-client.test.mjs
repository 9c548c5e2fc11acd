// The feed client (studypub/web/feed-client.js) in Node, against a real `studypub serve`.
//
// Started by tests/web/test_feed_client.py, which runs the server (and starts it again
// whenever it exits, for the restart test) and passes in the environment:
//   STUDYPUB_TEST_URL            the server's base URL
//   STUDYPUB_TEST_AUTHOR_TOKEN   the authoring API's token (writes, learners' tokens)
//   STUDYPUB_TEST_VIEWER_TOKEN   the feed's service token (sees everything)
//   STUDYPUB_TEST_PIDFILE        the file holding the server's pid (the restart test)
//   STUDYPUB_TEST_STUDYPUB       the studypub command; STUDYPUB_DATABASE_URL its database
// Run alone without them, every test is skipped.

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { promisify } from "node:util";

import { FeedClient, FeedError, SseParser, key, shouldApply, tokenClaims } from "../../studypub/web/feed-client.js";

const BASE = process.env.STUDYPUB_TEST_URL;
const AUTHOR = process.env.STUDYPUB_TEST_AUTHOR_TOKEN;
const SERVICE = process.env.STUDYPUB_TEST_VIEWER_TOKEN;
const skip = BASE && AUTHOR && SERVICE ? false : "run by tests/web/test_feed_client.py (needs a server)";
const T = { skip, timeout: 60_000 };
const RUN = Date.now().toString(36); // learners of this run
const WAIT_MS = 20_000;

// ---------------------------------------------------------------- helpers

// Every client a test makes is closed after it, passed or failed: an open stream would keep
// this process (and the test run) alive.
const clients = new Set();
afterEach(() => {
  for (const client of clients) client.close();
  clients.clear();
});

function track(client) {
  clients.add(client);
  return client;
}

async function api(method, path, body, expected = [200, 201, 204]) {
  const response = await fetch(BASE + path, {
    method,
    headers: { Authorization: "Bearer " + AUTHOR, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(expected.includes(response.status), `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const topic = (title) => api("POST", "/v1/topics", { title });

async function approvedCard(topicId, front) {
  const card = await api("POST", "/v1/cards", { topic_id: topicId, front, back: "back of " + front });
  return api("POST", `/v1/cards/${card.id}/approve`);
}

const review = (learner, cardId, rating = "good") =>
  api("POST", `/v1/learners/${learner}/cards/${cardId}/reviews`, { rating });

async function learnerToken(learner, kinds = null) {
  const issued = await api("POST", "/v1/viewer-tokens", { learner, ttl_s: 3600, kinds });
  assert.equal(issued.learner, learner);
  assert.equal(tokenClaims(issued.token).sub, learner);
  return issued.token;
}

/** The feed read with plain fetch from "0" until nothing is pending: key -> the entry of
 * its latest position (the feed is compacted and in seq order), and the last cursor. */
async function serverState(token) {
  const state = new Map();
  let cursor = "0";
  for (;;) {
    const url = `${BASE}/v1/feed?since=${encodeURIComponent(cursor)}&limit=1000`;
    const response = await fetch(url, { headers: { Authorization: "Bearer " + token } });
    assert.equal(response.status, 200, await response.clone().text());
    const page = await response.json();
    for (const entry of page.results) state.set(key(entry.kind, entry.id), entry);
    cursor = page.last_seq;
    if (page.pending === 0 || page.results.length === 0) return { state, cursor };
  }
}

/** What a copy holds, comparable with assert.deepEqual. */
function summary(items) {
  const out = {};
  for (const [k, e] of [...items].sort(([a], [b]) => (a < b ? -1 : 1))) {
    out[k] = [e.version, e.schema_version, e.hash, Boolean(e.deleted)];
  }
  return out;
}

/** Wait until the relay has published the current state of (kind, id). */
async function published(kind, id, version) {
  const url = `${BASE}/v1/items/${kind}/${id}`;
  await waitUntil(`${kind} ${id} v${version} to be published`, async () => {
    const response = await fetch(url, { headers: { Authorization: "Bearer " + SERVICE } });
    return response.ok && (await response.json()).version >= version;
  });
}

/** Wait until the server answers (after a restart). */
async function serverUp() {
  await waitUntil("the server to answer", async () => {
    try {
      const response = await fetch(`${BASE}/v1/feed?limit=1`, { headers: { Authorization: "Bearer " + SERVICE } });
      return response.ok;
    } catch {
      return false;
    }
  });
}

async function waitUntil(what, predicate, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function waitFor(what, predicate, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A fetch that records what went over the wire: each request's URL, status and
 * Last-Event-ID, and the id of every entry event streamed; `cut()` breaks the open stream
 * the way a dropped connection does. */
function wire() {
  const log = { requests: [], streamed: [], streams: new Set() };
  log.fetch = async (url, init) => {
    const request = { url, lastEventId: init.headers["Last-Event-ID"] ?? null, status: null };
    log.requests.push(request);
    const response = await fetch(url, init);
    request.status = response.status;
    if (!url.includes("/v1/feed/stream") || !response.ok) return response;
    const parser = new SseParser();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
        log.streams.add(controller);
      },
      async pull(c) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            log.streams.delete(controller);
            c.close();
            return;
          }
          for (const m of parser.push(decoder.decode(value, { stream: true }))) {
            if (m.type === "event" && m.event === "entry") log.streamed.push(m.id);
          }
          c.enqueue(value);
        } catch (err) {
          log.streams.delete(controller);
          c.error(err);
        }
      },
      cancel(reason) {
        log.streams.delete(controller);
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  log.cut = () => {
    for (const c of log.streams) c.error(new TypeError("terminated: the connection was cut"));
    log.streams.clear();
  };
  return log;
}

/** A started client and what it reported: statuses, and every entry it applied. */
async function follower(options = {}) {
  const seen = { statuses: [], applied: [], resets: 0 };
  const client = track(new FeedClient({
    baseUrl: BASE,
    token: SERVICE,
    onStatus: (status, detail) => seen.statuses.push({ status, ...detail }),
    onChange: ({ entries, reset }) => {
      seen.applied.push(...entries);
      if (reset) seen.resets += 1;
    },
    ...options,
  }));
  seen.client = client;
  await client.start();
  return seen;
}

const find = (client, kind, id) => client.items.get(key(kind, id));
const epochOf = (cursor) => cursor.split(/[.:]/)[0];

// ---------------------------------------------------------------- the tests

test("bootstrap pages from 0 to the server's exact state, tombstones included", T, async () => {
  const t = await topic("Bootstrap " + RUN);
  const gone = await topic("Deleted before the bootstrap " + RUN);
  await api("DELETE", `/v1/topics/${gone.id}`);
  const card = await approvedCard(t.id, "Bootstrap card " + RUN);
  const row = await api("POST", `/v1/learners/boot-${RUN}/cards/${card.id}`);
  await published("card_progress", row.id, row.version); // the last write

  const { client, statuses } = await follower({ pageLimit: 3 }); // many pages
  const now = await serverState(SERVICE);
  assert.deepEqual(summary(client.items), summary(now.state));
  assert.equal(find(client, "topic", gone.id).deleted, true, "the tombstone is held");
  assert.equal(find(client, "card", card.id).payload.front, "Bootstrap card " + RUN);
  const pages = statuses.filter((s) => s.status === "loading" && s.pending !== null);
  assert.ok(pages.length >= Math.ceil(now.state.size / 3), `paged ${pages.length} times`);
  assert.equal(pages.at(-1).pending, 0);
  await waitFor("the stream to open", () => client.status === "live");
  client.close();
  await client.closed;
});

test("following applies new writes live; a tombstone keeps its version", T, async () => {
  const seen = await follower();
  const { client } = seen;
  await waitFor("the stream to open", () => client.status === "live");
  const t = await topic("Live " + RUN);
  await waitFor("the new topic", () => find(client, "topic", t.id));
  const first = find(client, "topic", t.id);
  assert.equal(first.payload.title, "Live " + RUN);

  await api("PATCH", `/v1/topics/${t.id}`, { title: "Live, renamed " + RUN });
  await waitFor("the rename", () => find(client, "topic", t.id).payload.title === "Live, renamed " + RUN);
  await api("DELETE", `/v1/topics/${t.id}`);
  await waitFor("the deletion", () => find(client, "topic", t.id).deleted);
  const tombstone = find(client, "topic", t.id);
  assert.ok(tombstone.version > first.version);
  assert.ok(!client.payloads("topic").some((p) => p.id === t.id));
  assert.equal(shouldApply(tombstone, first), false, "an older entry never brings it back");
  const versions = seen.applied.filter((e) => e.kind === "topic" && e.id === t.id).map((e) => e.version);
  assert.equal(versions.length, 3, "created, renamed, deleted: each applied once");
  assert.ok(versions[0] < versions[1] && versions[1] < versions[2], String(versions));
  // The cursor is the id of the last event, the one to resume from.
  assert.equal(client.cursor, (await serverState(SERVICE)).cursor);
  client.close();
});

test("a learner's token never receives another learner's progress, live or not", T, async () => {
  const ana = "ana-" + RUN;
  const ben = "ben-" + RUN;
  const [anaToken, benToken] = [await learnerToken(ana), await learnerToken(ben)];
  const t = await topic("Decks " + RUN);
  const card = await approvedCard(t.id, "Deck card " + RUN);
  const anaRow = await api("POST", `/v1/learners/${ana}/cards/${card.id}`);
  const benRow = await api("POST", `/v1/learners/${ben}/cards/${card.id}`);
  await review(ben, card.id, "again");

  const anaSeen = await follower({ token: anaToken });
  const benSeen = await follower({ token: benToken });
  const progressOf = (client) =>
    [...client.items.values()].filter((e) => e.kind === "card_progress" && !e.deleted);
  await waitFor("both decks", () => find(anaSeen.client, "card_progress", anaRow.id) && find(benSeen.client, "card_progress", benRow.id));
  assert.ok(find(anaSeen.client, "card", card.id), "shared content is everyone's");
  assert.ok(find(benSeen.client, "card", card.id));
  assert.deepEqual(new Set(progressOf(anaSeen.client).map((e) => e.payload.learner)), new Set([ana]));
  assert.deepEqual(new Set(progressOf(benSeen.client).map((e) => e.payload.learner)), new Set([ben]));
  assert.equal(find(anaSeen.client, "card_progress", benRow.id), undefined);

  // Live: ben reviews, then ana; once ana's review is in, ben's would have come before it.
  await Promise.all([waitFor("ana live", () => anaSeen.client.status === "live"), waitFor("ben live", () => benSeen.client.status === "live")]);
  const benReview = await review(ben, card.id);
  const anaReview = await review(ana, card.id);
  await waitFor("ben's review on ben's feed", () => find(benSeen.client, "card_progress", benRow.id).payload.reps === benReview.reps);
  await waitFor("ana's review on ana's feed", () => find(anaSeen.client, "card_progress", anaRow.id).payload.reps === anaReview.reps);
  const foreign = (seen, learner) =>
    seen.applied.filter((e) => e.kind === "card_progress" && (e.deleted || e.payload.learner !== learner));
  assert.deepEqual(foreign(anaSeen, ana), []);
  assert.deepEqual(foreign(benSeen, ben), []);
  // The service token sees both.
  const all = (await serverState(SERVICE)).state;
  assert.equal(all.get(key("card_progress", benRow.id)).payload.reps, benReview.reps);
  assert.equal(all.get(key("card_progress", anaRow.id)).payload.reps, anaReview.reps);
  anaSeen.client.close();
  benSeen.client.close();

  // A token limited to some kinds: asking for another is a 403, final.
  const topicsOnly = await learnerToken(ana, ["topic"]);
  const limited = track(new FeedClient({ baseUrl: BASE, token: topicsOnly, kinds: ["card"] }));
  await assert.rejects(limited.start(), (err) => err instanceof FeedError && err.status === 403);
  assert.equal(limited.status, "forbidden");
  const allowed = await follower({ token: topicsOnly });
  assert.deepEqual(new Set([...allowed.client.items.values()].map((e) => e.kind)), new Set(["topic"]));
  allowed.client.close();
});

test("a missing, wrong or forged token is a 401, reported, and the client stops", T, async () => {
  const anaToken = await learnerToken("ana-" + RUN);
  const [head, payload] = anaToken.split(".");
  const forged = [head, payload, "c2lnbmF0dXJlLW9mLWEtZm9yZ2Vy"].join(".");
  for (const token of [null, "not-the-token", forged]) {
    const statuses = [];
    const client = track(new FeedClient({ baseUrl: BASE, token, onStatus: (s, d) => statuses.push([s, d]) }));
    await assert.rejects(client.start(), (err) => {
      assert.ok(err instanceof FeedError, String(err));
      assert.equal(err.status, 401);
      assert.equal(err.code, "unauthorized");
      assert.ok(err.detail, "the server says why");
      return true;
    });
    await client.closed; // stopped by itself: retrying cannot help
    assert.equal(client.status, "unauthorized");
    assert.equal(client.error.status, 401);
    assert.deepEqual(statuses.map(([s]) => s), ["loading", "unauthorized"]);
  }
});

test("a reset (another epoch) drops the copy and bootstraps again, live or on resume", T, async () => {
  const before = await follower();
  const { client } = before;
  await waitFor("the stream to open", () => client.status === "live");
  const oldCursor = client.cursor;
  const oldItems = new Map(client.items);

  const { stdout } = await promisify(execFile)(process.env.STUDYPUB_TEST_STUDYPUB, ["db", "new-epoch", "--yes"], {
    env: process.env,
  });
  assert.match(stdout, /epoch is now/);
  // The open stream says `event: reset`: the client rebuilds from 0, aside, then switches.
  await waitFor("the rebuild", () => before.resets === 2 && client.status === "live");
  assert.notEqual(epochOf(client.cursor), epochOf(oldCursor));
  assert.ok(before.statuses.some((s) => s.status === "loading" && s.reset && s.cursor === "0"));
  assert.deepEqual(summary(client.items), summary((await serverState(SERVICE)).state));
  client.close();

  // A copy stored under the old epoch: its first page is a 410, then a bootstrap from 0.
  const log = wire();
  const resumed = await follower({ cursor: oldCursor, items: oldItems, fetch: log.fetch });
  assert.deepEqual(
    log.requests.slice(0, 2).map((r) => [r.status, new URL(r.url).searchParams.get("since")]),
    [[410, oldCursor], [200, "0"]],
  );
  assert.equal(resumed.resets, 1);
  const t = await topic("After the new epoch " + RUN);
  await waitFor("a write after the reset", () => find(resumed.client, "topic", t.id));
  assert.deepEqual(summary(resumed.client.items), summary((await serverState(SERVICE)).state));
  resumed.client.close();
});

test("a cut stream resumes from Last-Event-ID: nothing lost, nothing twice", T, async () => {
  const log = wire();
  const seen = await follower({ fetch: log.fetch });
  const { client } = seen;
  await waitFor("the stream to open", () => client.status === "live");
  const a = await topic("Before the cut " + RUN);
  await waitFor("A", () => find(client, "topic", a.id));
  const cursorAtCut = client.cursor;
  log.cut();
  await waitFor("the client to notice", () => client.status === "reconnecting");
  const b = await topic("During the cut " + RUN); // published while nobody listens
  const c = await topic("Also during the cut " + RUN);
  await waitFor("B and C", () => find(client, "topic", b.id) && find(client, "topic", c.id));
  const streams = log.requests.filter((r) => r.url.includes("/v1/feed/stream"));
  assert.equal(streams.length, 2);
  assert.equal(streams[1].lastEventId, cursorAtCut);
  assert.equal(new Set(log.streamed).size, log.streamed.length, "no entry streamed twice");
  for (const t of [a, b, c]) {
    assert.equal(seen.applied.filter((e) => e.kind === "topic" && e.id === t.id).length, 1);
  }

  // Closing through the signal: no more requests, nothing more applied.
  const stop = new AbortController();
  const closing = await follower({ signal: stop.signal });
  await waitFor("the stream to open", () => closing.client.status === "live");
  stop.abort();
  await closing.client.closed;
  assert.equal(closing.client.status, "closed");
  const d = await topic("After close " + RUN);
  await waitFor("D on the other client", () => find(client, "topic", d.id));
  assert.equal(find(closing.client, "topic", d.id), undefined);
  client.close();
});

test("a server restart: the client reconnects and resumes, nothing lost or twice", T, async () => {
  const pidFile = process.env.STUDYPUB_TEST_PIDFILE;
  const log = wire();
  const seen = await follower({ fetch: log.fetch });
  const { client } = seen;
  await waitFor("the stream to open", () => client.status === "live");
  const a = await topic("Before the restart " + RUN);
  await waitFor("A", () => find(client, "topic", a.id));

  const pid = Number(readFileSync(pidFile, "utf8"));
  process.kill(pid, "SIGTERM"); // the test starts it again at once, on the same port
  await waitFor("the client to notice", () => client.status === "reconnecting");
  await waitFor("the new server", () => Number(readFileSync(pidFile, "utf8")) !== pid);
  await serverUp();
  const b = await topic("After the restart " + RUN); // likely before the client is back
  const c = await topic("Also after the restart " + RUN);
  await waitFor("B and C", () => find(client, "topic", b.id) && find(client, "topic", c.id));
  await waitFor("live again", () => client.status === "live");
  assert.equal(new Set(log.streamed).size, log.streamed.length, "no entry streamed twice");
  for (const t of [a, b, c]) {
    assert.equal(seen.applied.filter((e) => e.kind === "topic" && e.id === t.id).length, 1);
  }
  assert.ok(log.requests.filter((r) => r.url.includes("/v1/feed/stream")).at(-1).lastEventId);
  assert.deepEqual(summary(client.items), summary((await serverState(SERVICE)).state));
  client.close();
});

// ---------------------------------------------------------------- state checksums

/** The page requests (streams left out) a wire() recorded: their `since` and `kinds`. */
function pageRequests(log) {
  return log.requests
    .map((r) => new URL(r.url))
    .filter((url) => url.pathname === "/v1/feed")
    .map((url) => ({ since: url.searchParams.get("since"), kinds: url.searchParams.get("kinds") }));
}

/** A stored copy of a client: its cursor, and its entries copied (a test alters them). */
const storedCopy = (client) => ({
  cursor: client.cursor,
  items: new Map([...client.items].map(([k, e]) => [k, { ...e }])),
});

const statusesNamed = (seen, name) => seen.statuses.filter((s) => s.status === name);

/** Every one of the first 16 hex digits changed: both 32-bit halves differ. */
const tampered = (hash) =>
  [...hash.slice(0, 16)].map((c) => ((parseInt(c, 16) + 1) % 16).toString(16)).join("") + hash.slice(16);

test("an exact copy is proven at the head and never read again", T, async () => {
  const t = await topic("Verified " + RUN);
  const card = await approvedCard(t.id, "Verified card " + RUN);
  const vera = "vera-" + RUN;
  const row = await api("POST", `/v1/learners/${vera}/cards/${card.id}`);
  await published("card_progress", row.id, row.version);

  const log = wire();
  const first = await follower({ fetch: log.fetch, pageLimit: 7 });
  assert.equal(first.client.verified, 1);
  assert.deepEqual(first.client.differences, []);
  assert.deepEqual(first.client.repaired, []);
  assert.equal(statusesNamed(first, "verified").length, 1);
  assert.deepEqual(statusesNamed(first, "repairing"), []);
  const pages = pageRequests(log);
  assert.ok(pages.every((p) => p.kinds === null), JSON.stringify(pages));
  assert.equal(pages.filter((p) => p.since === "0").length, 1, "one bootstrap, no more");
  assert.equal(new Set(pages.map((p) => p.since)).size, pages.length, "each page read once");
  assert.equal(first.resets, 1);
  first.client.close();

  // Resumed from the stored copy: the pages after its cursor, nothing read again.
  const again = wire();
  const resumed = await follower({ ...storedCopy(first.client), fetch: again.fetch });
  assert.equal(resumed.client.verified, 1);
  assert.deepEqual(resumed.client.differences, []);
  const resumedPages = pageRequests(again);
  assert.deepEqual(resumedPages[0], { since: first.client.cursor, kinds: null });
  assert.ok(resumedPages.every((p) => p.since !== "0" && p.kinds === null), JSON.stringify(resumedPages));
  assert.equal(resumed.resets, 0);
  resumed.client.close();

  // The page's checksums are filtered like its entries: by the token's scope, by `kinds`.
  for (const options of [{ token: await learnerToken(vera) }, { kinds: ["topic", "card"] }]) {
    const scoped = wire();
    const seen = await follower({ ...options, fetch: scoped.fetch });
    assert.equal(seen.client.verified, 1, JSON.stringify(seen.client.differences));
    const asked = options.kinds ? options.kinds.join(",") : null;
    const scopedPages = pageRequests(scoped);
    assert.ok(scopedPages.every((p) => p.kinds === asked), JSON.stringify(scopedPages));
    assert.equal(scopedPages.filter((p) => p.since === "0").length, 1);
    seen.client.close();
  }
});

test("a tampered, a missing and an extra entry: only that kind is read again", T, async () => {
  const t = await topic("Repaired " + RUN);
  const card = await approvedCard(t.id, "Repaired card " + RUN);
  await published("card", card.id, card.version);
  const exact = await follower();
  exact.client.close();
  const extra = {
    kind: "explanation", id: 1e9, version: 1, schema_version: 1, deleted: false, seq: 1,
    hash: "ab".repeat(32), payload: { id: 1e9, question_id: 1e9, body: "never published" },
  };
  const cases = [
    ["topic", "a held entry's hash changed", (items) => {
      const entry = items.get(key("topic", t.id));
      entry.hash = tampered(entry.hash);
    }],
    ["card", "a live entry missing", (items) => items.delete(key("card", card.id))],
    ["explanation", "an entry the feed never had", (items) => items.set(key(extra.kind, extra.id), extra)],
  ];
  for (const [kind, what, alter] of cases) {
    const stored = storedCopy(exact.client);
    alter(stored.items);
    const log = wire();
    const seen = await follower({ ...stored, fetch: log.fetch, pageLimit: 3 });
    const { client } = seen;
    assert.deepEqual(client.differences.map((d) => d.kind), [kind], what);
    const [{ held, feed }] = client.differences;
    if (kind === "topic") assert.equal(held.count, feed.count, what);
    if (kind === "card") assert.equal(held.count, feed.count - 1, what);
    if (kind === "explanation") assert.deepEqual([held.count, feed.count], [1, 0], what);
    assert.notEqual(held.checksum, feed.checksum, what);
    assert.deepEqual(client.repaired, [kind], what);
    assert.deepEqual(client.unrepaired, [], what);
    assert.equal(client.verified, 1, what);
    assert.deepEqual(statusesNamed(seen, "mismatch"), [], what);
    // The requests: the page after the cursor, the kind alone from "0" (several pages),
    // and the page after the cursor again; never the whole feed.
    const pages = pageRequests(log);
    const rereads = pages.filter((p) => p.kinds !== null);
    assert.ok(rereads.length >= 1, what);
    assert.ok(rereads.every((p) => p.kinds === kind), `${what}: ${JSON.stringify(pages)}`);
    assert.equal(rereads[0].since, "0", what);
    assert.equal(rereads.filter((p) => p.since === "0").length, 1, `${what}: read once`);
    assert.deepEqual(pages.filter((p) => p.kinds === null).map((p) => p.since), [stored.cursor, stored.cursor], what);
    assert.equal(client.cursor, stored.cursor, `${what}: the cursor is kept`);
    assert.equal(seen.resets, 1, `${what}: one redraw, for the swap`);
    assert.deepEqual(summary(client.items), summary((await serverState(SERVICE)).state), what);
    client.close();
  }
});

test("a difference a repair cannot cure is reported once, then left alone for a backoff", T, async () => {
  await topic("Uncurable " + RUN);
  const log = wire();
  let streamResets = 1; // the first stream is answered by a 410: a rebuild, inside the backoff
  const lying = async (url, init) => {
    const path = new URL(url).pathname;
    if (path === "/v1/feed/stream" && streamResets > 0) {
      streamResets -= 1;
      log.requests.push({ url, lastEventId: null, status: 410 });
      const body = JSON.stringify({ error: "reset_required", detail: "a test's reset" });
      return new Response(body, { status: 410, headers: { "Content-Type": "application/json" } });
    }
    const response = await log.fetch(url, init);
    if (path !== "/v1/feed" || !response.ok) return response;
    const page = await response.json(); // a server whose checksum of topics is wrong
    if (page.checksums?.topic) page.checksums.topic.checksum = "0123456789abcdef";
    return new Response(JSON.stringify(page), { status: 200, headers: { "Content-Type": "application/json" } });
  };
  const backoff = { verifyBackoffMinMs: 3000, verifyBackoffMaxMs: 4000 };
  const seen = await follower({ fetch: lying, ...backoff });
  const quietUntil = Date.now() + backoff.verifyBackoffMinMs;
  const { client } = seen;
  const mismatches = () => statusesNamed(seen, "mismatch");
  const rereads = () => pageRequests(log).filter((p) => p.kinds !== null);
  assert.equal(mismatches().length, 1);
  assert.deepEqual(mismatches()[0].differences.map((d) => d.kind), ["topic"]);
  assert.equal(mismatches()[0].retryMs, 3000);
  assert.deepEqual(client.unrepaired.map((d) => d.kind), ["topic"]);
  assert.deepEqual(client.repaired, ["topic"]);
  assert.equal(client.verified, 0);
  assert.equal(client.error, null, "a difference does not stop the client");
  const firstRepair = rereads();
  assert.ok(firstRepair.length >= 1 && firstRepair.every((p) => p.kinds === "topic"));

  // A rebuild inside the backoff: compared, found different, neither repaired nor reported.
  await waitFor("the rebuild, then the stream", () => seen.resets === 3 && client.status === "live");
  assert.ok(Date.now() < quietUntil, "the rebuild came inside the backoff");
  assert.deepEqual(client.differences.map((d) => d.kind), ["topic"]);
  assert.equal(mismatches().length, 1, "reported once");
  assert.deepEqual(rereads(), firstRepair, "not read again inside the backoff");
  assert.deepEqual(client.repaired, ["topic"]);

  // Once the backoff has passed, the next catch-up repairs once more; the backoff doubles,
  // up to its maximum.
  await waitUntil("the backoff to pass", async () => Date.now() > quietUntil);
  streamResets = 1;
  log.cut();
  await waitFor("a second repair", () => mismatches().length === 2 && client.status === "live");
  assert.equal(mismatches()[1].retryMs, 4000);
  assert.deepEqual(client.repaired, ["topic", "topic"]);
  assert.equal(rereads().filter((p) => p.since === "0").length, 2);
  assert.ok(rereads().every((p) => p.kinds === "topic"));
  client.close();
});
