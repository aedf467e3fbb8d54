// Skiff dashboard. Plain JavaScript, no build step: it draws the pages from
// the controller's JSON API (/v1) with the admin token the operator signs
// in with. The token is kept in this tab's sessionStorage only and sent
// only in the Authorization header of these requests (never in a URL or a
// cookie), so another site cannot make the browser act with it.
"use strict";

const TOKEN_KEY = "skiff.token";
const REFRESH_MS = 1000;
const METRICS_MS = 2000;
const CHART_POINTS = 60;

// ---------------------------------------------------------------- helpers

/** An element: h("td", {class: "x"}, "text", child, ...). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    // Through the CSSOM: the page's CSP refuses inline style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function fill(id, ...children) {
  const el = document.getElementById(id);
  if (el) el.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null));
  return el;
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 1) return "just now";
  if (s < 120) return `${Math.round(s)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function when(ms) { return new Date(ms).toLocaleString(); }

function pill(text, kind) { return h("span", { class: `pill ${kind || ""}` }, text); }

const appLink = (name) => h("a", { href: `/ui/apps/${encodeURIComponent(name)}` }, name);
const nodeLink = (name) => h("a", { href: `/ui/nodes/${encodeURIComponent(name)}` }, name);

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status; this.code = code; this.field = field;
  }
  /** The API's message, and the field it names. */
  describe() { return this.field ? `${this.message} (field: ${this.field})` : this.message; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function call(method, path, body, { raw = false, tokenOverride } = {}) {
  const headers = { Authorization: `Bearer ${tokenOverride || token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", `cannot reach the controller's API (${e.message})`);
  }
  if (!response.ok) {
    let detail = {};
    try { detail = (await response.json()).error || {}; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail.code || `http_${response.status}`,
      detail.message || `${method} ${path}: HTTP ${response.status}`, detail.field);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Every page of a paged list (at most `max` items). */
async function all(path, max = 5000) {
  const items = [];
  let next = `${path}${path.includes("?") ? "&" : "?"}limit=500`;
  while (next && items.length < max) {
    const response = await call("GET", next, undefined, { raw: true });
    items.push(...(await response.json()));
    const cont = response.headers.get("skiff-continue");
    next = cont ? `${path}${path.includes("?") ? "&" : "?"}limit=500&continue=${encodeURIComponent(cont)}` : null;
  }
  return items;
}

// ---------------------------------------------------------------- banner and errors

function banner(text, kind) {
  const el = document.getElementById("banner");
  if (!text) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false; el.className = kind || ""; el.textContent = text;
}

/** What a failed refresh means for the operator. */
function trouble(e) {
  if (e.status === 401) {
    banner("The controller refused the token (revoked or replaced?). Sign in again.");
    sessionStorage.removeItem(TOKEN_KEY);
    signIn("The controller refused the stored token.");
    return;
  }
  if (e.status === 0) banner(`The API is unreachable: ${e.message}. Retrying…`);
  else banner(`The API answered an error: ${e.describe()}`);
}

/** Runs `task` now and every `ms` while this page is shown; errors go to the banner. */
function every(ms, task) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await task(); banner(null); } catch (e) { if (e instanceof ApiError) trouble(e); else throw e; }
    if (!stopped) setTimeout(tick, ms);
  };
  tick();
  pollers.push(() => { stopped = true; });
}
const pollers = [];

// ---------------------------------------------------------------- confirmation

/** Asks before `action` runs; shows the API's error in the dialog if it is refused. */
function confirmThen(text, action, extra) {
  const dialog = document.getElementById("confirm");
  fill("confirm-text", text);
  fill("confirm-extra", extra || []);
  const error = document.getElementById("confirm-error");
  error.hidden = true;
  const ok = document.getElementById("confirm-ok");
  const cancel = document.getElementById("confirm-cancel");
  ok.disabled = false;
  ok.onclick = async () => {
    ok.disabled = true;
    try { await action(); dialog.close(); } catch (e) {
      error.hidden = false;
      error.textContent = e instanceof ApiError ? e.describe() : String(e);
      ok.disabled = false;
    }
  };
  cancel.onclick = () => dialog.close();
  dialog.showModal();
}

// ---------------------------------------------------------------- sign-in

function signIn(why) {
  pollers.splice(0).forEach((stop) => stop());
  document.getElementById("sign-out").hidden = true;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "admin token" });
  const error = h("p", { id: "signin-error", class: "error", hidden: !why }, why || "");
  const submit = async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) { error.hidden = false; error.textContent = "Enter the admin token."; return; }
    try {
      await call("GET", "/v1/apps?limit=1", undefined, { tokenOverride: candidate });
    } catch (e) {
      error.hidden = false;
      error.textContent = e.status === 401 || e.status === 403
        ? `The controller refused this token: ${e.message}`
        : e.describe();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, candidate);
    banner(null);
    start();
  };
  fill("main", h("form", { class: "signin", onsubmit: submit },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" },
      "Paste the admin token: the content of the controller's token file (",
      h("code", {}, "skiff up"), " prints its path). It is kept for this browser tab only."),
    input, error,
    h("button", { type: "submit", id: "sign-in", class: "primary" }, "Sign in")));
  input.focus();
}

// ---------------------------------------------------------------- overview

function overviewPage() {
  fill("main",
    h("h1", {}, "Overview"),
    h("div", { class: "cards", id: "counts" }),
    h("h2", {}, "Nodes"),
    h("table", { id: "nodes-table" }),
    h("h2", {}, "Apps"),
    h("div", { class: "filters" }, h("input", { id: "app-filter", placeholder: "filter apps by name" })),
    h("table", { id: "apps-table" }));
  const observed = {};
  document.getElementById("app-filter").addEventListener("input", () => draw());
  let last = null;
  const draw = () => {
    if (!last) return;
    const { apps, nodes } = last;
    const ready = nodes.filter((n) => n.state === "Ready");
    const cordoned = nodes.filter((n) => n.cordoned);
    const appsReady = apps.filter((a) => a.status.ready_replicas >= a.status.desired_replicas);
    fill("counts",
      card("count-apps", apps.length, "apps"),
      card("count-apps-ready", appsReady.length, "apps fully ready"),
      card("count-nodes", nodes.length, "nodes"),
      card("count-nodes-ready", ready.length, "nodes ready"),
      card("count-nodes-not-ready", nodes.length - ready.length, "not ready"),
      card("count-nodes-cordoned", cordoned.length, "cordoned"));
    fill("nodes-table",
      h("tr", {}, ["node", "state", "memory: reserved / observed / declared", "replicas", "heartbeat"].map((t) => h("th", {}, t))),
      nodes.map((n) => nodeRow(n, observed[n.name])));
    const filter = document.getElementById("app-filter").value.trim();
    const shown = apps.filter((a) => !filter || a.name.includes(filter)).slice(0, 500);
    fill("apps-table",
      h("tr", {}, ["app", "ready / desired", "revision", "kind", "problems"].map((t) => h("th", {}, t))),
      shown.map(appRow));
  };
  // Observed memory comes from each node's own metrics: every fifth
  // refresh, and only for the first nodes shown.
  let ticks = 0;
  const observe = async (nodes) => {
    await Promise.all(nodes.slice(0, 50).filter((n) => n.state === "Ready").map(async (n) => {
      try {
        const text = await call("GET", `/v1/nodes/${encodeURIComponent(n.name)}/metrics`);
        observed[n.name] = parseMetrics(text).one("skiff_node_memory_used_bytes");
      } catch (_) { observed[n.name] = undefined; }
    }));
  };
  every(REFRESH_MS, async () => {
    const [apps, nodes] = await Promise.all([all("/v1/apps"), all("/v1/nodes")]);
    if (ticks++ % 5 === 0) await observe(nodes);
    last = { apps, nodes };
    draw();
  });
}

function card(id, n, label) {
  return h("div", { class: "card" }, h("div", { class: "n", id }, n), h("div", { class: "l" }, label));
}

function nodeState(n) {
  const state = n.state === "Ready" ? pill("Ready", "ok") : pill("NotReady", "bad");
  return [state, n.cordoned ? pill("cordoned", "warn") : null, n.draining ? pill("draining", "warn") : null];
}

function memoryBar(reserved, observed, declared) {
  const pct = (x) => `${Math.min(100, declared ? (100 * (x || 0)) / declared : 0).toFixed(1)}%`;
  return h("div", {},
    `${bytes(reserved)} / ${observed === undefined ? "–" : bytes(observed)} / ${bytes(declared)}`,
    h("div", { class: "bar" },
      h("span", { style: { width: pct(reserved) } }),
      observed === undefined ? null : h("span", { class: "observed", style: { width: pct(observed) } })));
}

function nodeRow(n, observed) {
  const alloc = n.allocation || { replicas: 0, reserved_bytes: 0 };
  return h("tr", { "data-node": n.name },
    h("td", {}, nodeLink(n.name)),
    h("td", {}, nodeState(n)),
    h("td", {}, memoryBar(alloc.reserved_bytes, observed, n.capacity.memory_bytes)),
    h("td", { class: "replicas" }, alloc.replicas),
    h("td", {}, ago(n.last_heartbeat)));
}

function problems(app) {
  return app.status.conditions.filter((c) => isProblem(c)).map((c) => `${c.kind}: ${c.reason}`);
}

// A condition is a problem when it is false, except those whose being
// true is the bad news.
function isProblem(c) {
  const badWhenTrue = ["Degraded", "Failed", "RolledBack", "Stalled"];
  return badWhenTrue.includes(c.kind) ? c.status : !c.status;
}

function appRow(a) {
  const ok = a.status.ready_replicas >= a.status.desired_replicas;
  const issues = problems(a);
  return h("tr", { "data-app": a.name },
    h("td", {}, appLink(a.name)),
    h("td", { class: "ready" }, pill(`${a.status.ready_replicas}/${a.status.desired_replicas}`, ok ? "ok" : "warn")),
    h("td", {}, a.revision),
    h("td", {}, a.spec.kind || "http"),
    h("td", {}, issues.length ? issues.map((p) => h("div", { class: "error" }, p)) : h("span", { class: "muted" }, "none")));
}

// ---------------------------------------------------------------- app page

function appPage(name) {
  const path = `/v1/apps/${encodeURIComponent(name)}`;
  const scaleInput = h("input", { id: "scale-input", type: "number", min: "0", max: "1000", style: { width: "90px" } });
  fill("main",
    h("h1", {}, "App ", h("span", { id: "app-name" }, name)),
    h("div", { class: "cards", id: "app-cards" }),
    h("div", { class: "actions" },
      h("label", {}, "Replicas ", scaleInput),
      h("button", { id: "scale-button", class: "primary", onclick: () => {
        const n = Number(scaleInput.value);
        confirmThen(`Scale ${name} to ${scaleInput.value} replicas?`,
          () => call("POST", `${path}/scale`, { replicas: Number.isInteger(n) ? n : scaleInput.value }));
      } }, "Scale"),
      h("button", { id: "delete-app", class: "danger", onclick: () =>
        confirmThen(`Delete ${name}, its revisions and replicas?`, async () => {
          await call("DELETE", path);
          location.assign("/ui");
        }) }, "Delete app")),
    h("div", { class: "grid" },
      h("div", { class: "panel" }, h("h2", {}, "Rollout"), h("div", { id: "rollout" })),
      h("div", { class: "panel" }, h("h2", {}, "Conditions"), h("table", { id: "conditions" }))),
    h("h2", {}, "Traffic"),
    h("div", { class: "grid", id: "charts" },
      chartPanel("chart-rps", "requests/s"),
      chartPanel("chart-errors", "errors/s by reason"),
      chartPanel("chart-latency", "latency p50 / p99 (ms)")),
    h("h2", {}, "Replicas"),
    h("table", { id: "replicas" }),
    h("h2", {}, "Revisions"),
    h("table", { id: "revisions" }),
    h("h2", {}, "Events"),
    h("table", { id: "app-events" }),
    h("h2", {}, "Logs ", h("span", { class: "muted", id: "logs-state" }, "(following)")),
    h("div", { class: "logs", id: "logs" }));
  let scaleTouched = false;
  scaleInput.addEventListener("input", () => { scaleTouched = true; });
  let nodesRunning = [];
  every(REFRESH_MS, async () => {
    const [app, replicas, revisions, events] = await Promise.all([
      call("GET", path), call("GET", `${path}/replicas`), call("GET", `${path}/revisions`),
      recentEvents(`/v1/events?app=${encodeURIComponent(name)}`)]);
    if (!scaleTouched) scaleInput.value = app.spec.replicas;
    const o = app.observed;
    fill("app-cards",
      card("app-ready", `${app.status.ready_replicas}/${app.status.desired_replicas}`, "ready / desired"),
      card("app-revision", app.revision, "revision"),
      card("app-good", app.status.good_revision ?? "–", "last good revision"),
      card("app-memory", o ? bytes(o.reserved_bytes) : bytes(app.spec.quota.memory_bytes), "reserved per replica"),
      card("app-rps", o ? o.requests_per_second.toFixed(1) : "0", "requests/s (reported)"));
    fill("rollout", rollout(app, replicas));
    fill("conditions",
      h("tr", {}, ["condition", "status", "reason", "message"].map((t) => h("th", {}, t))),
      app.status.conditions.map((c) => h("tr", { "data-condition": c.kind },
        h("td", {}, c.kind), h("td", {}, pill(String(c.status), isProblem(c) ? "bad" : "ok")),
        h("td", {}, c.reason), h("td", {}, c.message))));
    fill("replicas",
      h("tr", {}, ["replica", "node", "revision", "state", "reason"].map((t) => h("th", {}, t))),
      replicas.map((r) => h("tr", { "data-replica": r.id },
        h("td", { class: "mono" }, r.id), h("td", {}, nodeLink(r.node)), h("td", {}, r.revision),
        h("td", {}, pill(r.retiring_since ? "Retiring" : r.state, r.state === "Ready" ? "ok" : r.state === "Failed" ? "bad" : "warn")),
        h("td", {}, r.reason || ""))));
    fill("revisions", revisionRows(app, revisions));
    fill("app-events", eventRows(events.slice(-30).reverse()));
    nodesRunning = [...new Set(replicas.map((r) => r.node))];
  });
  followLogs(`${path}/logs?follow=true`);
  trafficCharts(name, () => nodesRunning);
}

function rollout(app, replicas) {
  const current = replicas.filter((r) => r.revision === app.revision && !r.retiring_since);
  const old = replicas.filter((r) => r.revision !== app.revision && !r.retiring_since);
  const newReady = current.filter((r) => r.state === "Ready").length;
  const oldReady = old.filter((r) => r.state === "Ready").length;
  const want = app.status.desired_replicas || 1;
  const total = Math.max(want, newReady + oldReady + (current.length - newReady));
  const width = (n) => `${(100 * n) / total}%`;
  const from = [...new Set(old.map((r) => r.revision))].sort((a, b) => a - b);
  const done = old.length === 0 && newReady >= app.status.desired_replicas;
  const strategy = app.spec.strategy || {};
  return [
    h("div", { id: "rollout-summary" },
      done ? `revision ${app.revision}: complete` :
        `revision ${from.length ? from.join(", ") : "–"} → ${app.revision}: ${newReady}/${app.status.desired_replicas} new ready, ${oldReady} old still serving`),
    h("div", { class: "progress", id: "rollout-progress" },
      h("span", { class: "new", style: { width: width(newReady) }, title: "new revision, ready" }),
      h("span", { class: "pending", style: { width: width(current.length - newReady) }, title: "new revision, starting" }),
      h("span", { class: "old", style: { width: width(oldReady) }, title: "old revision, serving" })),
    h("div", { class: "muted" },
      `surge ${strategy.max_surge ?? "–"}, unavailable ${strategy.max_unavailable ?? "–"}; health: `,
      app.spec.health ? `${app.spec.health.path}` : "first requests"),
  ];
}

function revisionRows(app, revisions) {
  const sorted = [...revisions].sort((a, b) => a.number - b.number);
  const rows = sorted.map((rev, i) => {
    const before = i > 0 ? sorted[i - 1].spec : null;
    const diff = capabilityDiff(before, rev.spec);
    const isCurrent = rev.number === app.revision;
    return h("tr", { "data-revision": rev.number },
      h("td", {}, rev.number, isCurrent ? [" ", pill("current", "ok")] : null,
        rev.number === app.status.good_revision && !isCurrent ? [" ", pill("good")] : null),
      h("td", {}, when(rev.created_at)),
      h("td", { class: "mono" }, rev.spec.artifact.slice(0, 19) + "…"),
      h("td", {}, diff.length ? diff.map((d) => h("div", { class: d.startsWith("+") ? "error" : "muted" }, d)) : h("span", { class: "muted" }, "no change")),
      h("td", {}, isCurrent ? "" : h("button", { "data-rollback": rev.number, onclick: () =>
        confirmThen(`Roll ${app.name} back to revision ${rev.number}?`,
          () => call("POST", `/v1/apps/${encodeURIComponent(app.name)}/rollback`, { revision: rev.number })) },
      "Roll back")));
  });
  return [h("tr", {}, ["revision", "created", "artifact", "capabilities vs previous", ""].map((t) => h("th", {}, t))), rows.reverse()];
}

/** What a revision grants beyond (+) or below (−) the one before it. */
function capabilityDiff(before, after) {
  const out = [];
  const hostsBefore = new Set(before ? before.allowed_outbound_hosts || [] : []);
  const hostsAfter = new Set(after.allowed_outbound_hosts || []);
  for (const x of hostsAfter) if (!hostsBefore.has(x)) out.push(`+ outbound ${x}`);
  for (const x of hostsBefore) if (!hostsAfter.has(x)) out.push(`− outbound ${x}`);
  const filesBefore = new Set(Object.keys(before ? before.files || {} : {}));
  const filesAfter = new Set(Object.keys(after.files || {}));
  for (const x of filesAfter) if (!filesBefore.has(x)) out.push(`+ file ${x}`);
  for (const x of filesBefore) if (!filesAfter.has(x)) out.push(`− file ${x}`);
  return out;
}

// ---------------------------------------------------------------- logs

async function followLogs(path) {
  const box = document.getElementById("logs");
  const state = document.getElementById("logs-state");
  const lines = [];
  for (;;) {
    try {
      const response = await call("GET", path, undefined, { raw: true });
      state.textContent = "(following)";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const parts = pending.split("\n");
        pending = parts.pop();
        for (const part of parts) {
          if (!part.trim()) continue;
          try { lines.push(JSON.parse(part)); } catch (_) { continue; }
        }
        lines.splice(0, Math.max(0, lines.length - 500));
        const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
        box.replaceChildren(...lines.map((e) => h("div", { class: e.stream === "stderr" ? "stderr" : "" },
          `${new Date(e.time).toLocaleTimeString()} ${e.node} ${e.line}`)));
        if (atBottom) box.scrollTop = box.scrollHeight;
      }
    } catch (e) {
      state.textContent = `(reconnecting: ${e.message})`;
    }
    await new Promise((r) => setTimeout(r, 2000));
    if (!document.body.isConnected) return;
  }
}

// ---------------------------------------------------------------- metrics and charts

/** Prometheus text → samples, with sums over label matches. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return {
    samples,
    one(name) { const s = samples.find((x) => x.name === name); return s ? s.value : undefined; },
  };
}

function chartPanel(id, label) {
  return h("div", { class: "panel" },
    h("div", { class: "chart-label" }, h("span", {}, label), h("span", { id: `${id}-now` }, "–")),
    svg("svg", { class: "chart", id, viewBox: `0 0 ${CHART_POINTS} 40`, preserveAspectRatio: "none" }));
}

function drawChart(id, series, now) {
  const el = document.getElementById(id);
  if (!el) return;
  const max = Math.max(1e-9, ...series.flatMap((s) => s.points));
  el.replaceChildren(...series.map((s) => svg("polyline", {
    class: s.class || "",
    points: s.points.map((v, i) => `${i + CHART_POINTS - s.points.length},${(40 - (38 * v) / max).toFixed(2)}`).join(" "),
  })));
  fill(`${id}-now`, now);
}

/** Requests/s, errors by reason and latency of `app`, summed over the nodes running it, from their metrics. */
function trafficCharts(app, nodes) {
  let previous = null;
  const rps = [], errors = [], p50 = [], p99 = [];
  const push = (arr, v) => { arr.push(v); if (arr.length > CHART_POINTS) arr.shift(); };
  every(METRICS_MS, async () => {
    const totals = { outcomes: {}, buckets: {}, at: Date.now() };
    await Promise.all(nodes().map(async (node) => {
      let text;
      try { text = await call("GET", `/v1/nodes/${encodeURIComponent(node)}/metrics`); } catch (_) { return; }
      for (const s of parseMetrics(text).samples) {
        if (s.labels.app !== app) continue;
        if (s.name === "skiff_node_requests_total") totals.outcomes[s.labels.outcome] = (totals.outcomes[s.labels.outcome] || 0) + s.value;
        if (s.name === "skiff_node_request_duration_seconds_bucket") totals.buckets[s.labels.le] = (totals.buckets[s.labels.le] || 0) + s.value;
      }
    }));
    if (previous) {
      const secs = Math.max(0.001, (totals.at - previous.at) / 1000);
      const delta = (a, b) => Math.max(0, (a || 0) - (b || 0));
      let all = 0; const bad = {};
      for (const [outcome, n] of Object.entries(totals.outcomes)) {
        const d = delta(n, previous.outcomes[outcome]);
        all += d;
        if (outcome !== "ok" && d > 0) bad[outcome] = d / secs;
      }
      push(rps, all / secs);
      push(errors, Object.values(bad).reduce((x, y) => x + y, 0));
      const bucketDeltas = Object.entries(totals.buckets)
        .map(([le, n]) => [le === "+Inf" ? Infinity : Number(le) * 1000, delta(n, previous.buckets[le])])
        .sort((x, y) => x[0] - y[0]);
      push(p50, quantile(bucketDeltas, 0.5));
      push(p99, quantile(bucketDeltas, 0.99));
      drawChart("chart-rps", [{ points: rps }], `${(all / secs).toFixed(1)}/s`);
      const reasons = Object.entries(bad).map(([k, v]) => `${k} ${v.toFixed(1)}/s`).join(", ");
      drawChart("chart-errors", [{ points: errors, class: "errors" }], reasons || "none");
      drawChart("chart-latency", [{ points: p50 }, { points: p99, class: "errors" }],
        `${p50[p50.length - 1].toFixed(1)} / ${p99[p99.length - 1].toFixed(1)} ms`);
    }
    previous = totals;
  });
}

/** The `q` quantile (ms) from cumulative bucket deltas [[le_ms, count]], interpolated within its bucket. */
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return 0;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, n] of buckets) {
    if (n >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / Math.max(1, n - below);
    }
    lower = le; below = n;
  }
  return lower;
}

// ---------------------------------------------------------------- node page

function nodePage(name) {
  const path = `/v1/nodes/${encodeURIComponent(name)}`;
  const action = (verb, text) => h("button", { id: `${verb}-node`, onclick: () =>
    confirmThen(text, () => call("POST", `${path}/${verb}`)) }, verb[0].toUpperCase() + verb.slice(1));
  fill("main",
    h("h1", {}, "Node ", h("span", { id: "node-name" }, name)),
    h("div", { class: "actions" },
      action("cordon", `Cordon ${name}? No new replicas will be placed on it.`),
      action("uncordon", `Uncordon ${name}?`),
      action("drain", `Drain ${name}? Its replicas move to other nodes first.`)),
    h("div", { class: "grid" },
      h("div", { class: "panel" }, h("h2", {}, "Node"), h("dl", { class: "kv", id: "node-facts" })),
      h("div", { class: "panel" }, h("h2", {}, "Labels"), h("dl", { class: "kv", id: "node-labels" }))),
    h("h2", {}, "Replicas"),
    h("table", { id: "node-replicas" }),
    h("h2", {}, "Recent events"),
    h("table", { id: "node-events" }));
  let observed;
  every(REFRESH_MS, async () => {
    const [node, mine, events] = await Promise.all([call("GET", path), call("GET", `${path}/replicas`), recentEvents("/v1/events")]);
    const alloc = node.allocation || { replicas: 0, reserved_bytes: 0 };
    fill("node-facts",
      h("dt", {}, "state"), h("dd", { id: "node-state" }, nodeState(node)),
      h("dt", {}, "heartbeat"), h("dd", {}, ago(node.last_heartbeat)),
      h("dt", {}, "ingress"), h("dd", { class: "mono" }, node.ingress),
      h("dt", {}, "memory"), h("dd", {}, memoryBar(alloc.reserved_bytes, observed, node.capacity.memory_bytes)),
      h("dt", {}, "replicas"), h("dd", {}, alloc.replicas),
      h("dt", {}, "registered"), h("dd", {}, when(node.registered_at)));
    fill("node-labels", Object.entries(node.labels).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    mine.sort((x, y) => x.app.localeCompare(y.app));
    fill("node-replicas",
      h("tr", {}, ["app", "replica", "revision", "state", "reason"].map((t) => h("th", {}, t))),
      mine.map((r) => h("tr", { "data-replica": r.id }, h("td", {}, appLink(r.app)), h("td", { class: "mono" }, r.id),
        h("td", {}, r.revision), h("td", {}, pill(r.state, r.state === "Ready" ? "ok" : "warn")), h("td", {}, r.reason || ""))));
    fill("node-events", eventRows(events.filter((e) => e.node === name).slice(-30).reverse()));
  });
  every(5 * METRICS_MS, async () => {
    try { observed = parseMetrics(await call("GET", `${path}/metrics`)).one("skiff_node_memory_used_bytes"); } catch (_) { observed = undefined; }
  });
}

// ---------------------------------------------------------------- events

const eventCache = {};

/** The events of `path`, fetched whole once, then only the new ones. */
async function recentEvents(path) {
  const cache = eventCache[path] || (eventCache[path] = { events: [], since: 0 });
  let more = true;
  while (more) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await call("GET", `${path}${sep}since=${cache.since}&limit=1000`);
    cache.events.push(...page);
    if (page.length) cache.since = page[page.length - 1].id;
    more = page.length === 1000;
  }
  cache.events.splice(0, Math.max(0, cache.events.length - 2000));
  return cache.events;
}

function eventRows(events) {
  return [
    h("tr", {}, ["time", "kind", "app", "node", "message"].map((t) => h("th", {}, t))),
    events.map((e) => h("tr", { "data-event": e.id },
      h("td", {}, new Date(e.time).toLocaleTimeString()), h("td", {}, e.kind),
      h("td", {}, e.app ? appLink(e.app) : ""), h("td", {}, e.node ? nodeLink(e.node) : ""),
      h("td", {}, e.message))),
  ];
}

function eventsPage() {
  const filters = ["app", "node", "kind"].map((f) => h("input", { id: `filter-${f}`, placeholder: `${f}` }));
  fill("main",
    h("h1", {}, "Events"),
    h("div", { class: "filters" }, filters, h("span", { class: "muted", id: "events-count" })),
    h("table", { id: "events-table" }));
  let events = [];
  const draw = () => {
    const [app, node, kind] = filters.map((f) => f.value.trim().toLowerCase());
    const shown = events.filter((e) =>
      (!app || (e.app || "").toLowerCase().includes(app)) &&
      (!node || (e.node || "").toLowerCase().includes(node)) &&
      (!kind || e.kind.toLowerCase().includes(kind)));
    fill("events-count", `${shown.length} of the last ${events.length}`);
    fill("events-table", eventRows(shown.slice(-300).reverse()));
  };
  filters.forEach((f) => f.addEventListener("input", draw));
  every(REFRESH_MS, async () => { events = await recentEvents("/v1/events"); draw(); });
}

// ---------------------------------------------------------------- pages

function missingPage(what, name) {
  fill("main", h("div", { class: "missing", id: "not-found" },
    h("h1", {}, `${what} “${name}” not found`),
    h("p", { class: "muted" }, "It may have been deleted, or the address is mistyped."),
    h("p", {}, h("a", { href: "/ui" }, "Back to the overview"))));
}

function start() {
  const page = document.body.dataset.page;
  const name = document.body.dataset.name;
  if (page === "missing-app") return missingPage("App", name);
  if (page === "missing-node") return missingPage("Node", name);
  if (page === "missing-page") return missingPage("Page", name);
  if (!token()) return signIn();
  document.getElementById("sign-out").hidden = false;
  const nav = { overview: "nav-overview", events: "nav-events" }[page];
  if (nav) document.getElementById(nav).classList.add("current");
  if (page === "app") appPage(name);
  else if (page === "node") nodePage(name);
  else if (page === "events") eventsPage();
  else overviewPage();
}

// A bug in this script says so instead of leaving a stale or blank page.
window.addEventListener("error", (e) => banner(`The dashboard hit an error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => banner(`The dashboard hit an error: ${e.reason}`));

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn();
  });
  start();
});
