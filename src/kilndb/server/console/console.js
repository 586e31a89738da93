// The KilnDB console: plain JavaScript over the server's HTTP API, no library.
// Views are sections shown by the location's hash (#overview, #feed, #browse/DB/STORE/KEY,
// #charts, #events); each refreshes while it is shown. With authentication on, the token
// the user gives is kept in sessionStorage (this tab only) and sent as a Bearer header,
// and to the SSE stream as ?token= (EventSource cannot send headers).
"use strict";

const TOKEN_KEY = "kiln.token";
const REFRESH_MS = 2000;
const FEED_ROWS = 200;
const SVG = "http://www.w3.org/2000/svg";

const state = {
  database: "default",
  view: "overview",
  timer: null,
  feed: null, // the EventSource of the live feed
  feedPaused: false,
  feedAfter: null, // the last position shown (the cursor to resume from)
  browse: { store: null, key: null, after: null, facts: [] },
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// -- formats -------------------------------------------------------------------------

function iso(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString();
}

function preview(value, limit = 120) {
  const text = JSON.stringify(value);
  return text.length > limit ? text.slice(0, limit - 1) + "…" : text;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const parts = [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]];
  const out = [];
  let rest = s;
  for (const [size, unit] of parts) {
    if (rest >= size || (unit === "s" && out.length === 0)) {
      out.push(Math.floor(rest / size) + unit);
      rest %= size;
    }
  }
  return out.slice(0, 2).join(" ");
}

// -- the API -------------------------------------------------------------------------

class Refused extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const held = token();
  if (held) headers.Authorization = "Bearer " + held;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    askForToken(held ? "The server refused this token: " + errorText(body) : "");
    throw new Refused(errorText(body));
  }
  if (!response.ok) {
    const error = new Error(errorText(body) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function errorText(body) {
  return body && body.error ? body.error : "";
}

function dispatch(op, params = {}) {
  const query = "?database=" + encodeURIComponent(state.database);
  return api("/v1/dispatch" + query, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ op, ...params }),
  });
}

function notice(text) {
  $("notice").textContent = text;
}

// -- sign in -------------------------------------------------------------------------

function askForToken(message) {
  stopTimers();
  closeFeed();
  for (const section of document.querySelectorAll("main > section")) section.hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("forget-token").hidden = !token();
  $("token").value = "";
  $("token").focus();
}

function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("login").hidden = true;
  $("forget-token").hidden = false;
  start();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken("");
}

// -- routing -------------------------------------------------------------------------

const VIEWS = ["overview", "feed", "browse", "charts", "events"];

function route() {
  const [view, ...rest] = location.hash.replace(/^#/, "").split("/").map(decodeURIComponent);
  state.view = VIEWS.includes(view) ? view : "overview";
  if (state.view === "browse" && rest.length) {
    if (rest[0] && rest[0] !== state.database) selectDatabase(rest[0]);
    const key = rest.length > 2 ? rest.slice(2).join("/") : null;
    if (key !== state.browse.key) $("asof").value = "";
    state.browse.store = rest[1] || null;
    state.browse.key = key;
  }
  show();
}

function show() {
  stopTimers();
  if (state.view !== "feed") closeFeed();
  if (!$("login").hidden) return;
  for (const view of VIEWS) {
    $("view-" + view).hidden = view !== state.view;
    const link = $("nav-" + view);
    if (view === state.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const refresh = {
    overview: refreshOverview, feed: openFeed, browse: refreshBrowser,
    charts: refreshCharts, events: refreshEvents,
  }[state.view];
  run(refresh);
  if (["overview", "charts", "events"].includes(state.view)) {
    state.timer = setInterval(() => run(refresh), REFRESH_MS);
  }
}

async function run(step) {
  try {
    await step();
    if (!(step === openFeed)) notice("");
  } catch (error) {
    if (!(error instanceof Refused)) notice(error.message);
  }
}

function stopTimers() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

function browseHash(store, key) {
  const parts = ["browse", state.database];
  if (store !== null) parts.push(store);
  if (key !== null) parts.push(key);
  return "#" + parts.map(encodeURIComponent).join("/");
}

// -- databases -------------------------------------------------------------------------

async function loadDatabases() {
  let names = ["default"];
  try {
    const listed = await dispatch("databases");
    if (listed.databases.length) names = listed.databases;
  } catch (error) {
    // A token that reads a database but not the server's list: that database only.
    if (error instanceof Refused) throw error;
  }
  if (!names.includes(state.database)) names.push(state.database);
  const select = $("database");
  select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  select.value = state.database;
  return names;
}

function selectDatabase(name) {
  state.database = name;
  $("database").value = name;
  state.browse = { store: null, key: null, after: null, facts: [] };
  state.feedAfter = null;
}

// -- overview --------------------------------------------------------------------------

async function refreshOverview() {
  const [status, cluster, replication, history, names] = await Promise.all([
    api("/v1/status"), api("/v1/cluster"), api("/v1/replication"),
    api("/v1/metrics/history"), loadDatabases(),
  ]);
  const summary = [
    ["Status", status.status],
    ["Uptime", duration(status.uptime_ms)],
    ["Role", replication.role],
    ["Addresses", status.addresses.join(" ")],
    ["Connections", status.metrics.active_connections],
    ["Subscriptions", status.metrics.subscription_count],
    ["Alerts", status.alerts.length],
  ];
  $("server-summary").replaceChildren(
    ...summary.map(([label, value]) => el("div", {}, el("strong", { text: label }), String(value))),
  );
  renderMembers(status, cluster);
  renderDatabases(names, status, cluster, replication, history);
}

function renderMembers(status, cluster) {
  const rows = [];
  if (cluster.cluster) {
    for (const member of cluster.cluster.members) {
      const addresses = [member.tcp, member.http, member.gossip].filter(Boolean).join(" ");
      const databases = Object.entries(member.databases || {})
        .map(([name, db]) => `${name} (${db.role}, epoch ${db.epoch})`).join(", ");
      rows.push([member.name, member.state, member.role, addresses, databases || "—"]);
    }
  } else {
    rows.push(["this server (no cluster)", status.status, "standalone",
      status.addresses.join(" "), status.databases.join(", ") || "—"]);
  }
  fillTable("members", rows);
}

function leaderOf(name, cluster, replication) {
  const coordinated = cluster.coordinator && cluster.coordinator.databases[name];
  if (coordinated) return [coordinated.leader || "—", coordinated.epoch];
  const gossiped = cluster.cluster && cluster.cluster.leaders[name];
  if (gossiped) return [gossiped.node, gossiped.epoch];
  const followed = replication.following.find((f) => f.database === name);
  if (followed) return [followed.leader, followed.leader_epoch];
  return ["this server", null];
}

function renderDatabases(names, status, cluster, replication, history) {
  const rows = names.map((name) => {
    const storage = status.storage[name];
    let [leader, epoch] = leaderOf(name, cluster, replication);
    if (epoch === null || epoch === undefined) epoch = history.epochs[name] ?? "—";
    const followers = replication.followers.filter((f) => f.database === name);
    const followed = replication.following.find((f) => f.database === name);
    const lag = followed
      ? followed.lag_records
      : Math.max(0, ...followers.map((f) => f.lag_records));
    const link = el("a", { href: "#browse/" + encodeURIComponent(name), text: name });
    return [
      link, leader, epoch,
      storage ? storage.last_position : "closed",
      storage ? storage.facts : "—",
      storage ? storage.fsyncs : "—",
      followers.map((f) => `${f.node || f.peer} (lag ${f.lag_records}, ${f.state})`).join(", ") || "—",
      lag,
    ];
  });
  fillTable("databases", rows);
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const row = el("tr");
    for (const cell of cells) {
      row.append(el("td", {}, cell instanceof Node ? cell : String(cell)));
    }
    return row;
  }));
}

// -- live feed -------------------------------------------------------------------------

function closeFeed() {
  if (state.feed) state.feed.close();
  state.feed = null;
}

async function openFeed() {
  closeFeed();
  if (state.feedPaused) {
    $("feed-state").textContent = `Paused after position ${state.feedAfter ?? 0}.`;
    return;
  }
  if (state.feedAfter === null) {
    state.feedAfter = (await dispatch("stats")).stats.last_position;
  }
  const query = new URLSearchParams({ database: state.database, cursor: state.feedAfter });
  const stores = $("feed-stores").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stores.length) query.set("stores", stores.join(","));
  if (token()) query.set("token", token());
  const source = new EventSource("/v1/events?" + query);
  state.feed = source;
  source.addEventListener("open", () => {
    $("feed-state").textContent = `Live from position ${state.feedAfter}`
      + (stores.length ? ` in ${stores.join(", ")}.` : ", every store.");
    notice("");
  });
  source.addEventListener("fact_written", (event) => addFact(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      closeFeed();
      $("feed-state").textContent = "The stream was refused or ended.";
      checkAccess();
    } else {
      $("feed-state").textContent = "Reconnecting…";
    }
  });
}

async function checkAccess() {
  // An EventSource does not say why it failed: ask the API, which shows a refusal.
  try {
    await api("/v1/status");
  } catch (error) {
    if (!(error instanceof Refused)) notice(error.message);
  }
}

function addFact(fact) {
  state.feedAfter = Math.max(state.feedAfter ?? 0, fact.position);
  const link = el("a", {
    href: "#browse/" + [state.database, fact.store, fact.key].map(encodeURIComponent).join("/"),
    text: `${fact.store} / ${fact.key}`,
  });
  const row = el("tr", { class: "fresh", "data-position": fact.position },
    el("td", { text: String(fact.position) }), el("td", {}, link),
    el("td", { text: String(fact.seq) }),
    el("td", { class: "value", text: fact.deleted ? "(deleted)" : preview(fact.value) }),
    el("td", { text: iso(fact.transaction_time) }));
  const body = $("feed-table").tBodies[0];
  body.prepend(row);
  while (body.rows.length > FEED_ROWS) body.deleteRow(body.rows.length - 1);
}

function toggleFeed() {
  state.feedPaused = !state.feedPaused;
  const button = $("feed-pause");
  button.textContent = state.feedPaused ? "Resume" : "Pause";
  button.setAttribute("aria-pressed", String(state.feedPaused));
  run(openFeed);
}

// -- fact browser ----------------------------------------------------------------------

function dbPath() {
  return "/v1/db/" + encodeURIComponent(state.database) + "/stores";
}

function keyPath(store, key) {
  return `${dbPath()}/${encodeURIComponent(store)}/keys/${encodeURIComponent(key)}`;
}

async function refreshBrowser() {
  await loadDatabases();
  const { store, key } = state.browse;
  renderCrumbs();
  const stores = (await api(dbPath())).stores;
  $("stores").replaceChildren(...stores.map((name) => pick(name, name === store, browseHash(name, null))));
  if (!stores.length) $("stores").append(el("li", { text: "No stores yet." }));
  if (store === null) {
    $("keys").replaceChildren();
    $("keys-more").hidden = true;
  } else {
    await loadKeys(false);
  }
  if (key === null) {
    $("history").tBodies[0].replaceChildren();
    $("asof-result").textContent = "";
    $("fact").hidden = true;
  } else {
    await loadHistory();
  }
}

function renderCrumbs() {
  const { store, key } = state.browse;
  const parts = [el("a", { href: browseHash(null, null), text: state.database })];
  if (store !== null) parts.push(" / ", el("a", { href: browseHash(store, null), text: store }));
  if (key !== null) parts.push(" / ", el("span", { text: key }));
  $("crumbs").replaceChildren(...parts);
}

function pick(text, current, href) {
  const button = el("button", { type: "button", "aria-current": String(current), text,
    onclick: () => { location.hash = href; } });
  return el("li", {}, button);
}

async function loadKeys(more) {
  const { store } = state.browse;
  const query = new URLSearchParams({ limit: "100" });
  const prefix = $("key-prefix").value;
  if (prefix) query.set("prefix", prefix);
  if (more && state.browse.after !== null) query.set("after", state.browse.after);
  const page = await api(`${dbPath()}/${encodeURIComponent(store)}/keys?` + query);
  const items = page.keys.map((k) => pick(k, k === state.browse.key, browseHash(store, k)));
  if (more) $("keys").append(...items);
  else $("keys").replaceChildren(...items);
  if (!page.keys.length && !more) $("keys").append(el("li", { text: "No keys." }));
  state.browse.after = page.next;
  $("keys-more").hidden = page.next === null;
}

async function loadHistory() {
  const { store, key } = state.browse;
  const facts = await api(keyPath(store, key) + "/history");
  state.browse.facts = facts;
  const body = $("history").tBodies[0];
  body.replaceChildren(...facts.slice().reverse().map((fact) => {
    const open = el("button", { type: "button", text: "Show", onclick: () => showFact(fact),
      "aria-label": `Show seq ${fact.seq}` });
    const asOf = el("button", { type: "button", text: "As of", onclick: () => pickTime(fact),
      "aria-label": `Pick the time of seq ${fact.seq}` });
    return el("tr", { "data-seq": fact.seq },
      el("td", { text: String(fact.seq) }), el("td", { text: String(fact.position) }),
      el("td", { text: iso(fact.transaction_time) }),
      el("td", { class: "value", text: fact.deleted ? "(deleted)" : preview(fact.value) }),
      el("td", {}, open, " ", asOf));
  }));
  if (facts.length) {
    const latest = facts[facts.length - 1];
    if (!$("asof").value) setPicker(latest.transaction_time);
    showFact(latest);
  }
}

function setPicker(seconds) {
  // datetime-local holds UTC here, to the millisecond.
  $("asof").value = new Date(Math.floor(seconds * 1000)).toISOString().slice(0, 23);
}

function pickTime(fact) {
  setPicker(fact.transaction_time);
  $("asof").focus();
}

async function readAsOf(event) {
  event.preventDefault();
  const { store, key } = state.browse;
  const picked = $("asof").value;
  if (!store || !key || !picked) return;
  const ms = Date.parse(picked + (picked.length <= 16 ? ":00Z" : "Z"));
  if (Number.isNaN(ms)) {
    $("asof-result").textContent = "Pick a date and time.";
    return;
  }
  // The end of the picked millisecond: a fact written during it is included.
  const asOf = (ms + 0.999) / 1000;
  const when = new Date(ms).toISOString();
  try {
    // The read op answers null for no value, where the REST route answers 404.
    const { fact } = await dispatch("read", { store, key, as_of: asOf });
    if (fact === null) {
      $("asof-result").textContent = `As of ${when}: no value.`;
      return;
    }
    $("asof-result").textContent = `As of ${when}: seq ${fact.seq} = ${preview(fact.value)}`;
    showFact(fact);
  } catch (error) {
    if (!(error instanceof Refused)) $("asof-result").textContent = error.message;
  }
}

function showFact(fact) {
  $("fact").hidden = false;
  $("fact-title").textContent = `Fact ${fact.store} / ${fact.key} seq ${fact.seq}`;
  const fields = [
    ["id", fact.id], ["seq", fact.seq], ["position", fact.position],
    ["transaction time", `${iso(fact.transaction_time)} (${fact.transaction_time})`],
    ["valid time", fact.valid_time === null ? "—" : `${iso(fact.valid_time)} (${fact.valid_time})`],
    ["causation", fact.causation ?? "—"], ["producer", fact.producer ?? "—"],
    ["derivation", fact.derivation === null ? "—" : JSON.stringify(fact.derivation)],
    ["metadata", JSON.stringify(fact.metadata || {})],
    ["schema version", fact.schema_version], ["value hash", fact.value_hash],
    ["deleted", String(Boolean(fact.deleted))],
  ];
  $("provenance").replaceChildren(...fields.flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", { text: String(value) })]));
  $("fact-json").textContent = JSON.stringify(fact, null, 2);
}

// -- charts ----------------------------------------------------------------------------

const CHARTS = [
  { title: "Writes", unit: "facts/s", series: ["writes_per_second"] },
  { title: "Fsyncs", unit: "per second", series: ["fsyncs_per_second"] },
  { title: "Request latency", unit: "ms, p50 and p99", series: ["latency_p50_ms", "latency_p99_ms"] },
  { title: "Replication lag", unit: "records", series: ["replication_lag_records"] },
];

async function refreshCharts() {
  const history = await api("/v1/metrics/history");
  const window = Number($("chart-window").value);
  const now = Date.now() / 1000;
  const samples = history.samples.filter((s) => s.at >= now - window);
  $("chart-list").replaceChildren(...CHARTS.map((chart) => drawChart(chart, samples, now, window)));
}

function drawChart(chart, samples, now, window) {
  const width = 600, height = 180, left = 44, bottom = 20, top = 8;
  const values = samples.flatMap((s) => chart.series.map((name) => s[name]))
    .filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...values));
  const x = (at) => left + ((at - (now - window)) / window) * (width - left - 4);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const latest = chart.series.map((name) => {
    const last = samples.length ? samples[samples.length - 1][name] : null;
    return last === null || last === undefined ? "—" : String(last);
  });
  svg.setAttribute("aria-label", `${chart.title} (${chart.unit}), now ${latest.join(" / ")}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    add("line", { class: "axis", x1: left, x2: width - 4, y1: y(value), y2: y(value) });
    add("text", { x: left - 4, y: y(value) + 3, "text-anchor": "end" }, formatTick(value));
  }
  add("text", { x: left, y: height - 4 }, `-${Math.round(window / 60)} min`);
  add("text", { x: width - 4, y: height - 4, "text-anchor": "end" }, "now");
  chart.series.forEach((name, index) => {
    const points = samples.filter((s) => s[name] !== null && s[name] !== undefined)
      .map((s) => `${x(s.at).toFixed(1)},${y(s[name]).toFixed(1)}`);
    if (points.length) {
      add("polyline", { class: index ? "line second" : "line", points: points.join(" ") });
    }
  });
  const caption = el("figcaption", { text: chart.title + " " },
    el("span", { text: `(${chart.unit}) now ${latest.join(" / ")}` }));
  return el("figure", { "data-chart": chart.series[0] }, caption, svg);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function formatTick(value) {
  return value >= 100 ? String(Math.round(value)) : String(Number(value.toPrecision(2)));
}

// -- recent events ---------------------------------------------------------------------

async function refreshEvents() {
  const events = await api("/v1/events/recent");
  const rows = events.slice().reverse().map((event) => {
    const { event: kind, at, ...details } = event;
    return [iso(at), kind, JSON.stringify(details)];
  });
  fillTable("recent", rows);
}

// -- start -----------------------------------------------------------------------------

async function start() {
  try {
    await api("/v1/status");
  } catch (error) {
    if (error instanceof Refused) return;
    notice(error.message); // a token without kiln::admin: the views it may read still work
  }
  $("forget-token").hidden = !token();
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("forget-token").addEventListener("click", forgetToken);
  $("database").addEventListener("change", (event) => {
    selectDatabase(event.target.value);
    if (state.view === "browse") location.hash = browseHash(null, null);
    else show();
  });
  $("feed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.feedAfter = null;
    run(openFeed);
  });
  $("feed-pause").addEventListener("click", toggleFeed);
  $("feed-clear").addEventListener("click", () => $("feed-table").tBodies[0].replaceChildren());
  $("keys-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.browse.after = null;
    run(() => loadKeys(false));
  });
  $("keys-more").addEventListener("click", () => run(() => loadKeys(true)));
  $("asof-form").addEventListener("submit", readAsOf);
  $("chart-window").addEventListener("change", () => run(refreshCharts));
  $("events-refresh").addEventListener("click", () => run(refreshEvents));
  window.addEventListener("hashchange", route);
  start();
});
