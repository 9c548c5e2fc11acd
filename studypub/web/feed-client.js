// studypub feed client: a replica of the published feed, kept in memory and kept current.
// One ES module, no build step, no dependencies; runs in browsers and in Node 20 (fetch,
// ReadableStream, TextDecoder, AbortController). The protocol is docs/feed-protocol.md.
//
//   import { FeedClient } from "./feed-client.js";
//   const feed = new FeedClient({ baseUrl: "https://feed.example.org", token, onChange });
//   await feed.start();  // resolves once caught up: feed.items is the server's state
//   feed.items;          // Map "kind:id" -> entry, tombstones included (deleted: true)
//   feed.close();        // stops at once; feed.closed resolves when it has
//
// Options of `new FeedClient({...})`, all optional:
//   baseUrl    the server ("" in a page served by it); token  viewer token, sent as
//              `Authorization: Bearer` (never in a URL); kinds  kinds to read (default all);
//   cursor, items  a stored copy to resume from (its cursor, its entries), instead of "0";
//   onChange({entries, reset})  after entries were applied: those that changed a key;
//              reset: `items` was replaced whole (a bootstrap, a rebuild): redraw it all;
//   onStatus(status, detail)  "loading" (paging; detail.cursor, detail.pending),
//              "verified" (the copy equals the feed; detail.checksums), "repairing" (kinds
//              differ: detail.differences), "mismatch" (a repair did not cure them:
//              detail.differences, detail.retryMs before the next repair), "live" (the
//              stream is open), "reconnecting" (detail.retryMs, detail.error), and the final
//              ones: "unauthorized" (401), "forbidden" (403), "failed" (any other refusal;
//              detail.error is the FeedError), "closed" (close() was called);
//   signal     an AbortSignal that closes the client; fetch  a fetch to use instead;
//   pageLimit, retryMinMs, retryMaxMs, idleTimeoutMs, verifyBackoffMinMs,
//              verifyBackoffMaxMs  knobs (defaults below).
//
// What it does: bootstrap (page GET /v1/feed from the cursor until nothing is pending; from
// "0" the copy is built aside and switched in when complete), then follow GET
// /v1/feed/stream, read with fetch and a streaming Server-Sent Events parser, resending
// the last cursor as Last-Event-ID when it reconnects, so nothing is lost or repeated. Every
// entry passes the apply rule (shouldApply); tombstones stay in `items` with their version,
// so that an older entry can never bring a deleted key back. A 410 or an `event: reset`
// drops the copy and bootstraps again from "0". Transport errors, 5xx and a stream that ends
// or goes silent are retried with exponential backoff and jitter, honouring the server's
// `retry:` hints and Retry-After, capped at retryMaxMs. A 401, 403 or other 4xx is final:
// retrying cannot help, so the client stops and says why (status, `error`).
//
// Each catch-up by paging (the bootstrap, a resume, a rebuild) ends with a proof: the page
// at the head carries the feed's checksums per kind, compared with those of `items`
// (`checksums`, `differences`). A kind that differs is read again alone from "0" and swapped
// in (the cursor kept: never the whole feed), then the client catches up and compares once
// more; what a repair did not cure is reported, and not repaired again before a backoff
// (verifyBackoffMinMs, doubled up to verifyBackoffMaxMs). `verified`, `differences`,
// `repaired` and `unrepaired` say what happened.

export const PAGE_LIMIT = 1000;
export const RETRY_MIN_MS = 1000;
export const RETRY_MAX_MS = 30000;
// The server sends a heartbeat comment after 15 s of silence: a stream silent for three
// times that is dead (a half-open connection), so it is dropped and opened again.
export const IDLE_TIMEOUT_MS = 45000;
const JITTER = 0.25; // each pause is lengthened by up to a quarter, at random
// After a repair that did not cure a difference: no repair again before this, doubled each
// time it happens again, up to the maximum.
export const VERIFY_BACKOFF_MIN_MS = 60_000;
export const VERIFY_BACKOFF_MAX_MS = 3_600_000;

/** The key of an entry in `items`. */
export function key(kind, id) {
  return kind + ":" + id;
}

/**
 * The apply rule of every consumer (docs/feed-protocol.md, "The apply rule"): apply `entry`
 * when its (version, schema_version) is higher than the held one's, or equal with another
 * hash or deleted flag (`verify --repair` republishes at the same version); never move a key
 * back. `current` is the entry held for the key, or undefined.
 */
export function shouldApply(current, entry) {
  if (!current) return true;
  if (entry.version !== current.version) return entry.version > current.version;
  if (entry.schema_version !== current.schema_version) {
    return entry.schema_version > current.schema_version;
  }
  return entry.hash !== current.hash || Boolean(entry.deleted) !== Boolean(current.deleted);
}

/**
 * The state checksums of the live entries among `entries` (docs/feed-protocol.md, "State
 * checksums"), per kind, of `kinds` only if given: {kind: {count, checksum}}. The checksum
 * is the sums, modulo 2^32, of the two 32-bit halves of each hash's first 16 hex digits.
 */
export function checksums(entries, kinds = null) {
  const sums = new Map();
  for (const entry of entries) {
    if (entry.deleted || (kinds && !kinds.includes(entry.kind))) continue;
    const sum = sums.get(entry.kind) || { count: 0, hi: 0, lo: 0 };
    sum.count += 1;
    sum.hi = (sum.hi + parseInt(entry.hash.slice(0, 8), 16)) >>> 0; // exact: below 2^33
    sum.lo = (sum.lo + parseInt(entry.hash.slice(8, 16), 16)) >>> 0;
    sums.set(entry.kind, sum);
  }
  const hex = (n) => n.toString(16).padStart(8, "0");
  const out = {};
  for (const kind of [...sums.keys()].sort()) {
    const { count, hi, lo } = sums.get(kind);
    out[kind] = { count, checksum: hex(hi) + hex(lo) };
  }
  return out;
}

/** The kinds whose {count, checksum} differ, in order: [{kind, held, feed}]. A kind missing
 * on one side has nothing live there. */
export function differences(held, feed) {
  const none = { count: 0, checksum: "0".repeat(16) };
  const differ = (a, b) => a.count !== b.count || a.checksum !== b.checksum;
  return [...new Set([...Object.keys(held), ...Object.keys(feed)])]
    .sort()
    .map((kind) => ({ kind, held: held[kind] || none, feed: feed[kind] || none }))
    .filter(({ held, feed }) => differ(held, feed));
}

/**
 * The claims of a learner's viewer token (a JWT), read without verifying it (the server
 * does that): `sub` is the learner. Null for anything else (the service token, say).
 */
export function tokenClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) =>
      c.charCodeAt(0),
    );
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** A refusal by the server: `status`, and its JSON `code` and `detail` when it sent them. */
export class FeedError extends Error {
  constructor(status, code, detail, retryAfterMs = null) {
    super(`feed answered HTTP ${status}${code ? " " + code : ""}${detail ? ": " + detail : ""}`);
    this.name = "FeedError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfterMs = retryAfterMs;
  }

  /** Retrying cannot help: a 4xx other than 408, 410 (a reset) and 429. */
  get final() {
    return this.status >= 400 && this.status < 500 && ![408, 410, 429].includes(this.status);
  }

  static async of(response) {
    let code = null;
    let detail = null;
    try {
      const body = await response.json();
      code = typeof body.error === "string" ? body.error : null;
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      // not JSON (a proxy's page, say): the status says enough
    }
    const after = Number(response.headers.get("Retry-After"));
    const retryAfterMs = Number.isFinite(after) && after > 0 ? after * 1000 : null;
    return new FeedError(response.status, code, detail, retryAfterMs);
  }
}

class ResetRequired extends Error {}

// A callback that throws (a rendering bug) must not break the feed: its error is thrown
// again on its own, where the page's error reporting sees it.
function callBack(fn, ...args) {
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

/**
 * A streaming Server-Sent Events parser (the WHATWG rules): push text as it arrives, get
 * back what it completed: {type: "event", event, data, id}, {type: "retry", ms} and
 * {type: "comment", text}. Lines end in CRLF, LF or CR, also split across chunks; an event
 * cut off before its blank line is never returned.
 */
export class SseParser {
  #buffer = "";
  #started = false;
  #event = "";
  #data = [];
  #id = "";

  push(text) {
    let buffer = this.#buffer + text;
    if (!this.#started && buffer.length) {
      this.#started = true;
      if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1);
    }
    const out = [];
    const ends = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = ends.exec(buffer)) !== null) {
      // A CR last in the buffer may be the first half of a CRLF: wait for the next chunk.
      if (match[0] === "\r" && match.index === buffer.length - 1) break;
      this.#line(buffer.slice(start, match.index), out);
      start = ends.lastIndex;
    }
    this.#buffer = buffer.slice(start);
    return out;
  }

  #line(line, out) {
    if (line === "") {
      if (this.#data.length) {
        out.push({ type: "event", event: this.#event || "message", data: this.#data.join("\n"), id: this.#id });
      }
      this.#event = "";
      this.#data = [];
      return;
    }
    if (line[0] === ":") {
      out.push({ type: "comment", text: line.slice(1).trim() });
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
    else if (field === "id" && !value.includes("\0")) this.#id = value;
    else if (field === "retry" && /^\d+$/.test(value)) out.push({ type: "retry", ms: Number(value) });
  }
}

export class FeedClient {
  /** Map "kind:id" -> the entry applied last for that key (tombstones: deleted: true). */
  items;
  /** The cursor after the last entry applied ("0": nothing yet). */
  cursor;
  /** The status last reported to onStatus. */
  status = "idle";
  /** The FeedError that stopped the client, if one did. */
  error = null;
  /** Resolves when the client has stopped (close(), the signal, or a final refusal). */
  closed;
  /** Catch-ups that proved the copy exact (its checksums equal the feed's at the head). */
  verified = 0;
  /** What the last comparison found: [{kind, held, feed}], each side {count, checksum}. */
  differences = [];
  /** The kinds read again to repair them, in order. */
  repaired = [];
  /** What the last repair did not cure ([] once a comparison found the copy exact). */
  unrepaired = [];
  #stopped;

  #opts;
  #fetch;
  #stop = new AbortController();
  #ready = null;
  #settleReady = null;
  #retryHintMs = 0; // the last `retry:` of a stream; like EventSource, it outlives the stream
  #failures = 0; // consecutive failed attempts, for the backoff
  #resumed = false; // the stream's cursor came from a stream before: send Last-Event-ID
  #quietUntil = 0; // after a repair that did not cure: no repair before this (Date.now())
  #verifyBackoffMs;

  constructor(options = {}) {
    this.#opts = {
      baseUrl: "",
      token: null,
      kinds: null,
      pageLimit: PAGE_LIMIT,
      retryMinMs: RETRY_MIN_MS,
      retryMaxMs: RETRY_MAX_MS,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      verifyBackoffMinMs: VERIFY_BACKOFF_MIN_MS,
      verifyBackoffMaxMs: VERIFY_BACKOFF_MAX_MS,
      onChange: () => {},
      onStatus: () => {},
      ...options,
    };
    this.#opts.baseUrl = String(this.#opts.baseUrl).replace(/\/+$/, "");
    this.closed = new Promise((resolve) => {
      this.#stopped = resolve;
    });
    this.#fetch = this.#opts.fetch || globalThis.fetch.bind(globalThis);
    this.#verifyBackoffMs = this.#opts.verifyBackoffMinMs;
    this.cursor = this.#opts.cursor || "0";
    this.items = new Map();
    for (const entry of this.#opts.items instanceof Map ? this.#opts.items.values() : this.#opts.items || []) {
      this.items.set(key(entry.kind, entry.id), entry);
    }
    if (this.#opts.signal) {
      if (this.#opts.signal.aborted) this.close();
      else this.#opts.signal.addEventListener("abort", () => this.close(), { once: true });
    }
  }

  /**
   * Start (once): bootstrap, then follow until close(). Resolves once the copy has caught
   * up with the server (then `items` is its state), or when closed before that; rejects
   * with the FeedError of a final refusal (a 401, say), after which the client has stopped.
   */
  start() {
    if (this.#ready) return this.#ready;
    this.#ready = new Promise((resolve, reject) => {
      this.#settleReady = (error) => {
        this.#settleReady = null;
        if (error) reject(error);
        else resolve(this);
      };
    });
    this.#run();
    return this.#ready;
  }

  /** Stop now: the request in flight is aborted, nothing more is applied. Idempotent. */
  close() {
    if (this.#stop.signal.aborted) return;
    this.#stop.abort();
    this.#report("closed", {});
    if (!this.#ready) this.#stopped(); // never started: nothing will run
  }

  /** The payloads of the live entries of `kind`, in id order. */
  payloads(kind) {
    const out = [];
    for (const entry of this.items.values()) {
      if (entry.kind === kind && !entry.deleted) out.push(entry.payload);
    }
    return out.sort((a, b) => a.id - b.id);
  }

  // ---------------------------------------------------------------- the loop

  async #run() {
    let fromScratch = this.cursor === "0";
    let resets = 0;
    while (!this.#stop.signal.aborted) {
      let hintMs = 0;
      let error = null;
      try {
        if (fromScratch || this.#settleReady) {
          await this.#verify(await this.#catchUp(fromScratch));
          fromScratch = false;
          resets = 0;
          this.#failures = 0;
          if (this.#settleReady) this.#settleReady();
        }
        // Returns when the server ended the stream (a restart, a deploy, the database
        // away): open it again after the server's `retry:` hint, like EventSource.
        await this.#follow();
      } catch (err) {
        if (this.#stop.signal.aborted) break;
        if (err instanceof ResetRequired || (err instanceof FeedError && err.status === 410)) {
          fromScratch = true;
          this.#resumed = false;
          // A reset is answered at once; only one that keeps coming waits, like a failure.
          if (resets++ === 0) continue;
        } else if (err instanceof FeedError && err.final) {
          this.error = err;
          const name = { 401: "unauthorized", 403: "forbidden" }[err.status] || "failed";
          this.#report(name, { error: err });
          if (this.#settleReady) this.#settleReady(err);
          break;
        } else {
          hintMs = (err instanceof FeedError && err.retryAfterMs) || 0;
        }
        error = err;
        this.#failures += 1;
      }
      if (this.#stop.signal.aborted) break;
      const retryMs = this.#pause(hintMs);
      this.#report("reconnecting", { retryMs, error });
      await this.#sleep(retryMs);
    }
    if (this.#settleReady) this.#settleReady(); // closed before it caught up
    this.#stopped();
  }

  /** How long to wait before the next attempt: the hint (Retry-After, `retry:`), doubled
   * for each failure in a row, at most retryMaxMs, plus jitter. */
  #pause(hintMs) {
    const { retryMinMs, retryMaxMs } = this.#opts;
    const base = Math.max(retryMinMs, hintMs, this.#retryHintMs);
    const ms = base * 2 ** Math.max(0, this.#failures - 1) * (1 + Math.random() * JITTER);
    return Math.round(Math.min(retryMaxMs, ms));
  }

  /** Page the feed until nothing is pending: from "0" into a new map switched in at the
   * end (readers never see half a copy), or from the cursor onto `items`. Returns the
   * checksums of the page at the head (null from an older server). */
  async #catchUp(fromScratch) {
    let cursor = fromScratch ? "0" : this.cursor;
    const items = fromScratch ? new Map() : this.items;
    const applied = [];
    let head = null;
    this.#report("loading", { cursor, pending: null, reset: fromScratch });
    for await (const page of this.#pages(cursor, this.#opts.kinds)) {
      const changed = this.#applyAll(items, page.results);
      cursor = page.last_seq;
      if (!fromScratch) {
        this.cursor = cursor;
        if (changed.length) this.#changed(changed, false);
      } else {
        applied.push(...changed);
      }
      this.#report("loading", { cursor, pending: page.pending, reset: fromScratch });
      head = page;
    }
    if (fromScratch) {
      this.items = items;
      this.cursor = cursor;
      this.#changed(applied, true);
    }
    return head.checksums || null;
  }

  /**
   * Prove the copy exact with the checksums of the page at the head (docs/feed-protocol.md,
   * "State checksums"). The kinds that differ are read again, each alone from "0", and
   * swapped in at once (the cursor kept); then a catch-up from the cursor and one more
   * comparison. What still differs is reported, and not repaired again before the backoff.
   */
  async #verify(served) {
    if (!served) return; // an older server: nothing to compare with
    const found = differences(this.#checksums(), served);
    this.differences = found;
    if (!found.length) return this.#exact(served);
    if (Date.now() < this.#quietUntil) return; // reported already: wait out the backoff
    this.#report("repairing", { differences: found });
    const kinds = found.map((d) => d.kind);
    const fresh = new Map();
    for (const kind of kinds) await this.#readKind(kind, fresh);
    for (const [k, entry] of this.items) if (kinds.includes(entry.kind)) this.items.delete(k);
    for (const [k, entry] of fresh) this.items.set(k, entry);
    this.repaired.push(...kinds);
    this.#changed([...fresh.values()], true); // keys went away too: redraw it all
    served = await this.#catchUp(false); // the others moved on meanwhile: one head
    const again = served ? differences(this.#checksums(), served) : [];
    if (!again.length) return this.#exact(served);
    this.unrepaired = again;
    const retryMs = this.#verifyBackoffMs;
    this.#quietUntil = Date.now() + retryMs;
    this.#verifyBackoffMs = Math.min(this.#opts.verifyBackoffMaxMs, retryMs * 2);
    this.#report("mismatch", { differences: again, retryMs });
  }

  #exact(served) {
    this.verified += 1;
    this.unrepaired = [];
    this.#verifyBackoffMs = this.#opts.verifyBackoffMinMs;
    this.#report("verified", { checksums: served });
  }

  /** The checksums of `items`, over the kinds this client reads (those it asked for, else
   * those its token allows; all when neither says). */
  #checksums() {
    const claims = tokenClaims(this.#opts.token);
    const kinds = this.#opts.kinds?.length ? this.#opts.kinds : claims?.kinds || null;
    return checksums(this.items.values(), kinds);
  }

  /** Read `kind` alone from "0" to the head into `into` (a 410 meanwhile: from "0" again). */
  async #readKind(kind, into) {
    for (;;) {
      const entries = new Map();
      try {
        for await (const page of this.#pages("0", [kind])) this.#applyAll(entries, page.results);
      } catch (err) {
        if (err instanceof FeedError && err.status === 410) continue; // a prune meanwhile
        throw err;
      }
      for (const [k, entry] of entries) into.set(k, entry);
      return;
    }
  }

  /** The pages from `cursor` up to the one with nothing pending after it. */
  async *#pages(cursor, kinds) {
    for (;;) {
      const page = await this.#page(cursor, kinds);
      yield page;
      if (page.pending === 0 || page.results.length === 0) return;
      cursor = page.last_seq;
    }
  }

  async #page(cursor, kinds) {
    const query = { since: cursor, limit: String(this.#opts.pageLimit) };
    if (kinds && kinds.length) query.kinds = kinds.join(",");
    const response = await this.#fetch(this.#url("/v1/feed", query), {
      headers: this.#headers({ Accept: "application/json" }),
      signal: this.#stop.signal,
      cache: "no-store", // a private page may be cached without `Vary: Authorization`
    });
    if (!response.ok) throw await FeedError.of(response);
    return response.json();
  }

  /** One stream, read to its end: returns when the server ended it, throws on a reset, a
   * refusal, a transport error or a silence longer than idleTimeoutMs. */
  async #follow() {
    const connection = new AbortController();
    const abort = () => connection.abort();
    this.#stop.signal.addEventListener("abort", abort, { once: true });
    let idle = null;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(abort, this.#opts.idleTimeoutMs);
    };
    try {
      touch();
      const headers = this.#headers({ Accept: "text/event-stream" });
      if (this.#resumed) headers["Last-Event-ID"] = this.cursor;
      const response = await this.#fetch(this.#url("/v1/feed/stream", { since: this.cursor }), {
        headers,
        signal: connection.signal,
        cache: "no-store",
      });
      if (!response.ok) throw await FeedError.of(response);
      this.#failures = 0;
      this.#resumed = true;
      this.#report("live", { cursor: this.cursor });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { done, value } = await reader.read();
        if (this.#stop.signal.aborted) return;
        if (done) break;
        touch();
        this.#handle(parser.push(decoder.decode(value, { stream: true })));
      }
      this.#handle(parser.push(decoder.decode()));
    } catch (err) {
      if (connection.signal.aborted && !this.#stop.signal.aborted && !(err instanceof ResetRequired)) {
        throw new Error(`the stream was silent for ${this.#opts.idleTimeoutMs} ms`);
      }
      throw err;
    } finally {
      clearTimeout(idle);
      this.#stop.signal.removeEventListener("abort", abort);
      connection.abort(); // let go of the connection whatever happened
    }
  }

  #handle(messages) {
    const changed = [];
    try {
      for (const message of messages) {
        if (message.type === "retry") this.#retryHintMs = message.ms;
        if (message.type !== "event") continue;
        if (message.event === "reset") throw new ResetRequired(message.data);
        if (message.event !== "entry") continue;
        changed.push(...this.#applyAll(this.items, [JSON.parse(message.data)]));
        if (message.id) this.cursor = message.id;
      }
    } finally {
      if (changed.length) this.#changed(changed, false);
    }
  }

  // ---------------------------------------------------------------- helpers

  #applyAll(items, entries) {
    const changed = [];
    for (const entry of entries) {
      const k = key(entry.kind, entry.id);
      if (shouldApply(items.get(k), entry)) {
        items.set(k, entry);
        changed.push(entry);
      }
    }
    return changed;
  }

  #changed(entries, reset) {
    if (!this.#stop.signal.aborted) callBack(this.#opts.onChange, { entries, reset });
  }

  #report(status, detail) {
    if (this.status === "closed") return;
    this.status = status;
    callBack(this.#opts.onStatus, status, detail);
  }

  #url(path, query) {
    const params = new URLSearchParams(query);
    if (!params.has("kinds") && this.#opts.kinds?.length) params.set("kinds", this.#opts.kinds.join(","));
    return this.#opts.baseUrl + path + "?" + params;
  }

  #headers(extra) {
    const headers = { ...extra };
    if (this.#opts.token) headers.Authorization = "Bearer " + this.#opts.token;
    return headers;
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const signal = this.#stop.signal;
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
