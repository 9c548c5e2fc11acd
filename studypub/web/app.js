// studypub viewer: a read-only replica of the published feed, kept in memory.
//
// Protocol (see "Feed contract" in the README):
//   1. bootstrap: page GET /v1/feed from cursor 0 until nothing is pending; the feed is
//      compacted, so reading 0..head yields exactly the current state (tombstones included);
//   2. follow: EventSource on /v1/feed/stream from the last cursor; every `entry` event is
//      applied and its id becomes the cursor; the browser resends it as Last-Event-ID when it
//      reconnects, so nothing is lost or repeated;
//   3. an `event: reset` (or a 410 while paging) means the cursor is below the feed floor or
//      from another epoch: drop everything and bootstrap again from 0.
// Every entry goes through the apply rule (shouldApply), the same as the relay's and the Python
// replica's. Tombstones stay in memory with their version (not rendered), so that an older
// entry can never bring a deleted key back.
"use strict";

(function () {
  const PAGE_LIMIT = 1000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;

  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || window.sessionStorage.getItem("studypub-token") || "";
  if (params.get("token")) window.sessionStorage.setItem("studypub-token", token);

  const state = {
    items: new Map(), // "kind:id" -> entry (tombstones included, with `deleted: true`)
    cursor: "0",
    source: null,
    retryMs: RETRY_MIN_MS,
    renderQueued: false,
    revealed: new Map(), // question id -> chosen choice
    flipped: new Set(), // card ids showing their back
  };

  // ------------------------------------------------------------------ feed

  function key(kind, id) {
    return kind + ":" + id;
  }

  // The apply rule of every consumer (docs/feed-protocol.md, "apply rule"): apply an entry
  // when its (version, schema_version) is higher than the held one's, or equal with another
  // hash or deleted flag (`verify --repair` republishes at the same version); never move a
  // key back. `current` is the entry held for the key, or undefined.
  function shouldApply(current, entry) {
    if (!current) return true;
    if (entry.version !== current.version) return entry.version > current.version;
    if (entry.schema_version !== current.schema_version) {
      return entry.schema_version > current.schema_version;
    }
    return entry.hash !== current.hash || Boolean(entry.deleted) !== Boolean(current.deleted);
  }

  function apply(entry) {
    const k = key(entry.kind, entry.id);
    if (shouldApply(state.items.get(k), entry)) state.items.set(k, entry);
  }

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  class ResetRequired extends Error {}
  class Unauthorized extends Error {}

  async function fetchPage(cursor) {
    const url = "/v1/feed?since=" + encodeURIComponent(cursor) + "&limit=" + PAGE_LIMIT;
    const res = await fetch(url, { headers: authHeaders(), cache: "no-store" });
    if (res.status === 410) throw new ResetRequired();
    if (res.status === 401) throw new Unauthorized();
    if (!res.ok) throw new Error("feed answered HTTP " + res.status);
    return res.json();
  }

  async function bootstrap() {
    setStatus("loading", "loading");
    for (;;) {
      try {
        let cursor = "0";
        const items = new Map();
        state.items = items;
        for (;;) {
          const page = await fetchPage(cursor);
          page.results.forEach(apply);
          cursor = page.last_seq;
          setCursor(cursor);
          if (page.pending === 0 || page.results.length === 0) break;
        }
        state.cursor = cursor;
        state.retryMs = RETRY_MIN_MS;
        scheduleRender();
        return;
      } catch (err) {
        if (err instanceof ResetRequired) continue; // the floor moved while paging: restart
        if (err instanceof Unauthorized) {
          // Retrying cannot help: say what is needed and stop.
          setStatus("error", token ? "wrong viewer token" : "needs a viewer token: open /?token=…");
          document.getElementById("empty").textContent =
            "This feed needs a viewer token. Open this page as /?token=<viewer token>.";
          throw err;
        }
        setStatus("reconnecting", "reconnecting");
        await sleep(nextRetry());
      }
    }
  }

  function follow() {
    if (state.source) state.source.close();
    let url = "/v1/feed/stream?since=" + encodeURIComponent(state.cursor);
    if (token) url += "&token=" + encodeURIComponent(token);
    const source = new EventSource(url);
    state.source = source;

    source.addEventListener("open", () => {
      state.retryMs = RETRY_MIN_MS;
      setStatus("live", "live");
    });
    source.addEventListener("entry", (ev) => {
      apply(JSON.parse(ev.data));
      if (ev.lastEventId) setCursor(ev.lastEventId);
      scheduleRender();
    });
    source.addEventListener("reset", () => {
      source.close();
      rebuild();
    });
    source.addEventListener("error", () => {
      setStatus("reconnecting", "reconnecting");
      // The browser retries by itself (sending Last-Event-ID) unless the server refused the
      // connection outright; then we start a fresh one from our own cursor after a pause.
      if (source.readyState === EventSource.CLOSED && state.source === source) {
        state.source = null;
        setTimeout(follow, nextRetry());
      }
    });
  }

  async function rebuild() {
    state.source = null;
    state.cursor = "0";
    await start();
  }

  async function start() {
    try {
      await bootstrap();
    } catch (err) {
      if (err instanceof Unauthorized) return; // already shown; nothing to follow
      throw err;
    }
    follow();
  }

  function nextRetry() {
    const ms = state.retryMs;
    state.retryMs = Math.min(RETRY_MAX_MS, state.retryMs * 2);
    return ms + Math.random() * 250;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ------------------------------------------------------------------ status

  function setStatus(name, text) {
    const el = document.getElementById("status");
    el.dataset.state = name;
    document.getElementById("status-text").textContent = text;
  }

  function setCursor(cursor) {
    state.cursor = cursor;
    document.getElementById("cursor").textContent = cursor;
  }

  // ------------------------------------------------------------------ render

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    setTimeout(() => {
      state.renderQueued = false;
      render();
    }, 16);
  }

  function byKind(kind) {
    const out = [];
    for (const entry of state.items.values()) {
      if (entry.kind === kind && !entry.deleted) out.push(entry.payload);
    }
    return out.sort((a, b) => a.id - b.id);
  }

  function groupBy(list, field) {
    const out = new Map();
    for (const item of list) {
      const k = item[field];
      if (!out.has(k)) out.set(k, []);
      out.get(k).push(item);
    }
    return out;
  }

  function render() {
    const topics = byKind("topic");
    const questions = byKind("question");
    const cards = byKind("card");
    const explanations = new Map(byKind("explanation").map((e) => [e.question_id, e]));
    const progress = groupBy(byKind("card_progress"), "card_id");
    const questionsOf = groupBy(questions, "topic_id");
    const cardsOf = groupBy(cards, "topic_id");

    const sections = topics.map((topic) =>
      topicSection(topic, questionsOf.get(topic.id) || [], cardsOf.get(topic.id) || [], explanations, progress),
    );
    // Content whose topic is not (or no longer) published still shows, under "Other".
    const known = new Set(topics.map((t) => t.id));
    const strayQ = questions.filter((q) => !known.has(q.topic_id));
    const strayC = cards.filter((c) => !known.has(c.topic_id));
    if (strayQ.length || strayC.length) {
      sections.push(
        topicSection({ id: "other", title: "Other", description: "" }, strayQ, strayC, explanations, progress),
      );
    }

    const main = document.getElementById("content");
    if (sections.length === 0) {
      main.replaceChildren(h("p", { id: "empty", class: "empty" }, "Nothing is published yet."));
    } else {
      main.replaceChildren(...sections);
    }
    document.getElementById("topic-nav").replaceChildren(
      ...topics.map((t) =>
        h("a", { href: "#topic-" + t.id, class: "chip" }, t.title,
          h("span", { class: "chip-count" }, String((questionsOf.get(t.id) || []).length + (cardsOf.get(t.id) || []).length))),
      ),
    );
    document.getElementById("counts").textContent =
      plural(topics.length, "topic") + " · " + plural(questions.length, "question") + " · " +
      plural(cards.length, "card");
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function topicSection(topic, questions, cards, explanations, progress) {
    return h(
      "section",
      { class: "topic", id: "topic-" + topic.id, "data-kind": "topic", "data-id": topic.id },
      h("header", { class: "topic-head" },
        h("h2", {}, topic.title),
        topic.description ? h("p", { class: "desc" }, topic.description) : null),
      h("div", { class: "columns" },
        h("div", { class: "col" },
          h("h3", {}, "Questions ", h("span", { class: "count" }, String(questions.length))),
          questions.length
            ? questions.map((q) => questionView(q, explanations.get(q.id)))
            : h("p", { class: "none" }, "No questions yet.")),
        h("div", { class: "col" },
          h("h3", {}, "Cards ", h("span", { class: "count" }, String(cards.length))),
          cards.length
            ? h("div", { class: "card-grid" }, cards.map((c) => cardView(c, progress.get(c.id) || [])))
            : h("p", { class: "none" }, "No cards yet."))),
    );
  }

  function questionView(q, explanation) {
    const chosen = state.revealed.get(q.id);
    const revealed = chosen !== undefined;
    const choices = q.choices.map((choice) => {
      let cls = "choice";
      if (revealed && choice === q.answer) cls += " correct";
      else if (revealed && choice === chosen) cls += " wrong";
      return h("li", {},
        h("button", {
          type: "button", class: cls, "aria-pressed": revealed && choice === chosen ? "true" : "false",
          onclick: () => { state.revealed.set(q.id, choice); render(); },
        }, choice));
    });
    let after = null;
    if (revealed) {
      const verdict = chosen === q.answer ? "Correct." : "Answer: " + q.answer;
      after = h("div", { class: "reveal" },
        h("p", { class: chosen === q.answer ? "verdict ok" : "verdict ko" }, verdict),
        explanation
          ? h("p", { class: "explanation", "data-kind": "explanation", "data-id": q.id }, explanation.body)
          : h("p", { class: "explanation pending" }, "Explanation not ready yet."),
        h("button", { type: "button", class: "link", onclick: () => { state.revealed.delete(q.id); render(); } }, "Try again"));
    }
    return h("article", { class: "question", "data-kind": "question", "data-id": q.id },
      h("p", { class: "stem" }, q.stem),
      h("ol", { class: "choices", type: "A" }, choices),
      after);
  }

  function cardView(card, progress) {
    const flipped = state.flipped.has(card.id);
    const p = progress[0];
    let badge = null;
    if (p) {
      const when = { month: "short", day: "numeric" };
      const due = p.due_at ? " · due " + new Date(p.due_at).toLocaleDateString(undefined, when) : "";
      badge = h("span", { class: "badge state-" + p.state }, p.state + due);
    }
    return h("button", {
      type: "button", class: flipped ? "card flipped" : "card", "data-kind": "card", "data-id": card.id,
      "aria-label": flipped ? "Card back, tap to see the front" : "Card front, tap to see the back",
      onclick: () => { if (flipped) state.flipped.delete(card.id); else state.flipped.add(card.id); render(); },
    },
    h("span", { class: "side" }, flipped ? "back" : "front"),
    h("span", { class: "face" }, flipped ? card.back : card.front),
    badge);
  }

  // ------------------------------------------------------------------ start

  // For debugging from the console, and for the tests (shouldApply is checked against the
  // Python replica's rule).
  window.studypub = Object.assign(state, { shouldApply });
  start();
})();
