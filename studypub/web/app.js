// studypub viewer: renders the replica that feed-client.js keeps (bootstrap, stream, apply
// rule, resets, reconnects: all there, see its header and docs/feed-protocol.md).
//
// The viewer token comes in the URL fragment, `/#token=<token>`: a fragment never reaches
// the server, so the token stays out of URLs and access logs. It is kept in sessionStorage
// (this tab only), removed from the address bar at once, and sent in the Authorization
// header. A learner's token (a JWT) also shows that learner's deck: their cards, due first.

import { FeedClient, shouldApply, tokenClaims } from "./feed-client.js";

const TOKEN_KEY = "studypub-token";
const DECK_REFRESH_MS = 30000; // cards fall due as time passes, without any new entry
const when = { month: "short", day: "numeric" };
const whenTime = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };

const ui = {
  client: null,
  token: "",
  learner: null, // the `sub` of a learner's token, else null (the service token, no token)
  renderTimer: null, // a render queued for the next frame, else null
  revealed: new Map(), // question id -> chosen choice
  flipped: new Set(), // card ids showing their back
};

// ------------------------------------------------------------------ token

/** The token of `#token=...` (then kept in sessionStorage and taken out of the address
 * bar), else the one this tab kept. */
function takeToken() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const given = fragment.get("token");
  if (given !== null) {
    if (given) window.sessionStorage.setItem(TOKEN_KEY, given);
    else window.sessionStorage.removeItem(TOKEN_KEY);
    fragment.delete("token");
    const rest = fragment.toString();
    const { pathname, search } = window.location;
    window.history.replaceState(window.history.state, "", pathname + search + (rest ? "#" + rest : ""));
  }
  return window.sessionStorage.getItem(TOKEN_KEY) || "";
}

function connect() {
  if (ui.client) ui.client.close();
  ui.token = takeToken();
  const claims = tokenClaims(ui.token);
  ui.learner = claims && typeof claims.sub === "string" ? claims.sub : null;
  ui.client = new FeedClient({ token: ui.token, onChange: scheduleRender, onStatus: showStatus });
  ui.client.start().catch(() => {}); // a refusal is shown by showStatus
  scheduleRender();
}

// ------------------------------------------------------------------ status

function showStatus(status, detail) {
  if (status === "loading") {
    setStatus("loading", detail.reset && ui.client.items.size ? "rebuilding" : "loading");
    setCursor(detail.cursor);
  } else if (status === "live") {
    // "live" says the page shows the state at the cursor: draw what is queued first.
    renderNow();
    setStatus("live", "live");
    setCursor(detail.cursor);
  } else if (status === "reconnecting") {
    setStatus("reconnecting", "reconnecting");
  } else if (status === "unauthorized" || status === "forbidden" || status === "failed") {
    refused(status, detail.error);
  }
}

function refused(status, error) {
  const how = "Open this page as /#token=<viewer token> (the part after # never leaves your browser).";
  let short;
  let message;
  if (status === "unauthorized" && !ui.token) {
    short = "needs a viewer token";
    message = "This feed needs a viewer token. " + how;
  } else if (status === "unauthorized") {
    // Expired or wrong: keeping it would only fail again at the next reload.
    window.sessionStorage.removeItem(TOKEN_KEY);
    short = "viewer token refused";
    message = "The viewer token was refused (" + (error.detail || "expired or wrong") + "). " + how;
  } else if (status === "forbidden") {
    short = "not allowed";
    message = "This viewer token may not read this feed (" + (error.detail || "forbidden") + ").";
  } else {
    short = "feed error";
    message = "The feed refused the request: " + error.message;
  }
  setStatus("error", short);
  const main = document.getElementById("content");
  main.replaceChildren(h("p", { id: "empty", class: "empty error" }, message));
}

function setStatus(name, text) {
  document.getElementById("status").dataset.state = name;
  document.getElementById("status-text").textContent = text;
}

function setCursor(cursor) {
  if (cursor) document.getElementById("cursor").textContent = cursor;
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

/** Render once for a burst of changes (a bootstrap delivers them page by page). */
function scheduleRender() {
  if (ui.renderTimer === null) ui.renderTimer = setTimeout(renderNow, 16);
}

function renderNow() {
  clearTimeout(ui.renderTimer);
  ui.renderTimer = null;
  render();
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
  const client = ui.client;
  if (["unauthorized", "forbidden", "failed"].includes(client.status)) return; // the message stays
  setCursor(client.cursor);
  const topics = client.payloads("topic");
  const questions = client.payloads("question");
  const cards = client.payloads("card");
  const explanations = new Map(client.payloads("explanation").map((e) => [e.question_id, e]));
  const progress = groupBy(client.payloads("card_progress"), "card_id");
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
  const deck = ui.learner ? deckOf(ui.learner, client.payloads("card_progress"), cards) : null;
  if (deck) sections.unshift(deckSection(ui.learner, deck));

  const main = document.getElementById("content");
  if (sections.length === 0) {
    const waiting = client.status === "loading" && client.cursor === "0";
    main.replaceChildren(h("p", { id: "empty", class: "empty" }, waiting ? "Loading the feed…" : "Nothing is published yet."));
  } else {
    main.replaceChildren(...sections);
  }
  const chips = topics.map((t) =>
    h("a", { href: "#topic-" + t.id, class: "chip" }, t.title,
      h("span", { class: "chip-count" }, String((questionsOf.get(t.id) || []).length + (cardsOf.get(t.id) || []).length))),
  );
  if (deck) {
    chips.unshift(h("a", { href: "#deck", class: "chip chip-deck" }, "My deck",
      h("span", { class: "chip-count" }, deck.due + " due")));
  }
  document.getElementById("topic-nav").replaceChildren(...chips);
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
  const chosen = ui.revealed.get(q.id);
  const revealed = chosen !== undefined;
  const choices = q.choices.map((choice) => {
    let cls = "choice";
    if (revealed && choice === q.answer) cls += " correct";
    else if (revealed && choice === chosen) cls += " wrong";
    return h("li", {},
      h("button", {
        type: "button", class: cls, "aria-pressed": revealed && choice === chosen ? "true" : "false",
        onclick: () => { ui.revealed.set(q.id, choice); render(); },
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
      h("button", { type: "button", class: "link", onclick: () => { ui.revealed.delete(q.id); render(); } }, "Try again"));
  }
  return h("article", { class: "question", "data-kind": "question", "data-id": q.id },
    h("p", { class: "stem" }, q.stem),
    h("ol", { class: "choices", type: "A" }, choices),
    after);
}

function cardView(card, progress) {
  const flipped = ui.flipped.has(card.id);
  const p = progress[0];
  let badge = null;
  if (p) {
    const due = p.due_at ? " · due " + new Date(p.due_at).toLocaleDateString(undefined, when) : "";
    badge = h("span", { class: "badge state-" + p.state }, p.state + due);
  }
  return h("button", {
    type: "button", class: flipped ? "card flipped" : "card", "data-kind": "card", "data-id": card.id,
    "aria-label": flipped ? "Card back, tap to see the front" : "Card front, tap to see the back",
    onclick: () => { if (flipped) ui.flipped.delete(card.id); else ui.flipped.add(card.id); render(); },
  },
  h("span", { class: "side" }, flipped ? "back" : "front"),
  h("span", { class: "face" }, flipped ? card.back : card.front),
  badge);
}

// ------------------------------------------------------------------ the learner's deck

/** The learner's progress rows joined with their cards: due first (the most overdue
 * first), then by due date, never scheduled (new, suspended, retired) last. */
function deckOf(learner, progressRows, cards) {
  const cardsById = new Map(cards.map((c) => [c.id, c]));
  const now = Date.now();
  const rows = progressRows
    .filter((p) => p.learner === learner)
    .map((p) => {
      const dueAt = p.due_at ? Date.parse(p.due_at) : null;
      return { progress: p, card: cardsById.get(p.card_id) || null, dueAt, due: dueAt !== null && dueAt <= now };
    });
  rows.sort((a, b) => {
    if ((a.dueAt === null) !== (b.dueAt === null)) return a.dueAt === null ? 1 : -1;
    return (a.dueAt || 0) - (b.dueAt || 0) || a.progress.id - b.progress.id;
  });
  return { rows, due: rows.filter((r) => r.due).length };
}

function deckSection(learner, deck) {
  const items = deck.rows.map(deckRow);
  return h("section", { class: "topic deck", id: "deck", "data-learner": learner },
    h("header", { class: "topic-head" },
      h("h2", {}, learner + "'s deck"),
      h("p", { class: "desc" },
        plural(deck.rows.length, "card") + " · " + deck.due + " due now")),
    items.length
      ? h("ol", { class: "deck-list" }, items)
      : h("p", { class: "none" }, "No cards in this deck yet."));
}

function deckRow({ progress: p, card, dueAt, due }) {
  let whenText;
  if (dueAt === null) whenText = p.state === "new" ? "not studied yet" : "not scheduled";
  else if (due) whenText = "due now";
  else whenText = "due " + new Date(dueAt).toLocaleString(undefined, whenTime);
  const terminal = p.state === "suspended" || p.state === "retired";
  let cls = "deck-card";
  if (due) cls += " due";
  if (terminal) cls += " terminal";
  return h("li", {
    class: cls, "data-kind": "card_progress", "data-id": p.id, "data-card-id": p.card_id,
    "data-state": p.state, "data-due": due ? "now" : dueAt === null ? "never" : "later",
  },
  h("span", { class: "deck-front" }, card ? card.front : "Card " + p.card_id + " (withdrawn)"),
  h("span", { class: "deck-meta" },
    h("span", { class: "badge state-" + p.state }, p.state),
    h("span", { class: "deck-when" }, whenText)));
}

// ------------------------------------------------------------------ start

// For debugging from the console, and for the tests (shouldApply is checked against the
// Python replica's rule).
window.studypub = {
  shouldApply,
  get client() { return ui.client; },
  get items() { return ui.client.items; },
  get cursor() { return ui.client.cursor; },
  get learner() { return ui.learner; },
};
window.addEventListener("hashchange", () => {
  if (new URLSearchParams(window.location.hash.slice(1)).has("token")) connect(); // a new token
});
setInterval(() => { if (ui.learner) scheduleRender(); }, DECK_REFRESH_MS);
connect();
