// The steward console: a thin page over the HTTP API. It has no powers of its own: every
// action is a call to /v1 with the signed-in account's bearer token, and every error the API
// returns is shown in words. Everything is rendered as DOM nodes with text content (never
// HTML strings), so nothing from the server is interpreted as markup.
"use strict";

const state = { token: sessionStorage.getItem("secretum.token"), me: null, auditStack: [] };

// ---- small helpers --------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const fmt = (x, d = 4) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en", { maximumFractionDigits: d }));
const badge = (s) => h("span", { class: `badge ${s}` }, s);
const when = (t) => (t ? new Date(t).toLocaleString() : "–");

function showError(message) {
  const a = document.getElementById("alert");
  a.className = "alert";
  a.textContent = message;
  a.hidden = false;
}

function showInfo(message) {
  const a = document.getElementById("alert");
  a.className = "alert info";
  a.textContent = message;
  a.hidden = false;
}

function clearAlert() {
  document.getElementById("alert").hidden = true;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", `The server could not be reached (${e.message}).`);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const err = data && data.error ? data.error : { code: `http_${resp.status}`, message: text || resp.statusText };
    const rule = err.rule ? ` (rule: ${err.rule})` : "";
    throw new ApiError(resp.status, err.code, `${err.message}${rule} [${resp.status} ${err.code}]`);
  }
  return data;
}

// Run an action, showing any error in words; returns the result or undefined.
async function attempt(fn, success) {
  clearAlert();
  try {
    const r = await fn();
    if (success) showInfo(success);
    return r;
  } catch (e) {
    if (e.status === 401) signOut("Your token is no longer accepted (revoked or rotated). Sign in again.");
    else showError(e.message);
    return undefined;
  }
}

// ---- navigation -------------------------------------------------------------------------------

const ROUTES = {
  steward: [["#/pending", "Pending requests"], ["#/projects", "Projects"], ["#/audit", "Audit log"], ["#/catalog", "Catalog"]],
  researcher: [["#/projects", "My projects"], ["#/request", "Request a project"], ["#/catalog", "Catalog"]],
  admin: [],
};

function renderNav() {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...ROUTES[state.me.role].map(([href, label]) => h("a", { href, "aria-current": location.hash.startsWith(href) ? "page" : null }, label)));
  nav.hidden = false;
  document.getElementById("who-name").textContent = `${state.me.name} (${state.me.role})`;
  document.getElementById("who").hidden = false;
}

async function route() {
  const view = document.getElementById("view");
  if (!state.me) {
    document.getElementById("sign-in").hidden = false;
    view.replaceChildren();
    return;
  }
  document.getElementById("sign-in").hidden = true;
  const routes = ROUTES[state.me.role];
  if (!routes.length) {
    view.replaceChildren(h("section", { class: "card" }, h("h2", {}, "Accounts"), h("p", {}, "Administrators manage accounts with `secretum user` or the /v1/users API; the console is for stewards and researchers.")));
    return;
  }
  if (!routes.some(([href]) => location.hash.startsWith(href))) {
    location.hash = routes[0][0];
    return;
  }
  renderNav();
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const render = {
    "/pending": pendingView,
    "/projects": projectsView,
    "/audit": auditView,
    "/catalog": catalogView,
    "/request": requestView,
  }[path.replace(/\/\d+$/, "")];
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    view.replaceChildren(...(await render(params, path)));
  } catch (e) {
    view.replaceChildren();
    if (e.status === 401) signOut("Your token is no longer accepted (revoked or rotated). Sign in again.");
    else showError(e.message);
  }
  document.getElementById("main").focus();
}

function signOut(message) {
  sessionStorage.removeItem("secretum.token");
  state.token = null;
  state.me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  if (message) showError(message);
  route();
}

// ---- steward: pending requests ----------------------------------------------------------------

async function pendingView() {
  const pending = await api("GET", "/v1/projects?status=pending");
  const out = [h("h2", {}, `Pending requests (${pending.length})`)];
  if (!pending.length) out.push(h("p", { class: "muted" }, "No request is waiting for a decision."));
  for (const p of pending) out.push(pendingCard(p));
  return out;
}

function pendingCard(p) {
  const req = p.requested || { epsilon: 0, delta: 0, tables: [] };
  const id = p.id;
  const defaultExpiry = new Date(Date.now() + (p.duration_days || 90) * 86400000).toISOString().slice(0, 10);
  const tables = h("fieldset", {}, h("legend", {}, "Tables granted"),
    req.tables.map((t) => h("label", {}, h("input", { type: "checkbox", name: "tables", value: t, checked: true }), t)));
  const approve = h("form", { "aria-label": `Approve ${p.title}`, onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const grant = {
      epsilon: Number(f.epsilon.value),
      delta: Number(f.delta.value),
      tables: [...f.querySelectorAll("input[name=tables]:checked")].map((c) => c.value),
      expires_at: new Date(`${f.expires.value}T23:59:59Z`).toISOString(),
    };
    if (await attempt(() => api("POST", `/v1/projects/${id}/approve`, grant), `Approved "${p.title}".`)) route();
  } },
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: `eps-${id}` }, "ε granted"), h("input", { id: `eps-${id}`, name: "epsilon", type: "number", step: "any", min: "0", value: req.epsilon, required: true })),
      h("div", {}, h("label", { for: `delta-${id}` }, "δ granted"), h("input", { id: `delta-${id}`, name: "delta", type: "number", step: "any", min: "0", value: req.delta, required: true })),
      h("div", {}, h("label", { for: `exp-${id}` }, "Expires on"), h("input", { id: `exp-${id}`, name: "expires", type: "date", value: defaultExpiry, required: true }))),
    tables,
    h("div", { class: "actions" }, h("button", { type: "submit", "data-action": "approve" }, "Approve")));
  const reject = h("form", { "aria-label": `Reject ${p.title}`, onsubmit: async (ev) => {
    ev.preventDefault();
    const reason = ev.target.reason.value;
    if (await attempt(() => api("POST", `/v1/projects/${id}/reject`, { reason }), `Rejected "${p.title}".`)) route();
  } },
    h("label", { for: `reason-${id}` }, "Reason for a rejection (the researcher reads it)"),
    h("textarea", { id: `reason-${id}`, name: "reason", required: true }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "danger", "data-action": "reject" }, "Reject")));
  return h("article", { class: "card", "data-project": p.name },
    h("h3", {}, p.title, " ", badge(p.status)),
    h("p", { class: "muted" }, `#${p.id} ${p.name}, requested by ${p.owner || "–"} on ${when(p.created_at)}; members: ${p.members.join(", ")}`),
    h("p", { class: "purpose" }, p.purpose),
    h("p", {}, `Asks for ε ${fmt(req.epsilon)}, δ ${req.delta}, tables ${req.tables.join(", ")}, for ${p.duration_days} days.`),
    approve, reject);
}

// ---- projects and burn-down -------------------------------------------------------------------

async function projectsView() {
  const projects = await api("GET", "/v1/projects");
  const steward = state.me.role === "steward";
  const out = [h("h2", {}, steward ? "Projects" : "My projects")];
  if (steward) {
    const pol = await api("GET", "/v1/policy");
    const cap = pol.policy.patient_epsilon_cap;
    const spent = pol.epsilon_spent_all_projects;
    const dcap = pol.policy.patient_delta_cap;
    const dspent = pol.delta_spent_all_projects;
    out.push(h("section", { class: "card", id: "warehouse-cap" },
      h("h3", {}, "Warehouse-wide per-patient cap"),
      h("p", {}, `All projects together have spent ε ${fmt(spent)} of the cap ${fmt(cap)} that bounds what any one patient can lose.`),
      h("div", { class: "meter", role: "meter", "aria-valuemin": 0, "aria-valuemax": cap, "aria-valuenow": spent, "aria-label": "ε spent against the per-patient cap" },
        h("span", { style: `width:${Math.min(100, (100 * spent) / cap).toFixed(1)}%` })),
      h("p", { id: "delta-cap" }, `and δ ${dspent.toExponential(2)} of the per-patient δ cap ${dcap.toExponential(2)}.`),
      h("div", { class: "meter", role: "meter", "aria-valuemin": 0, "aria-valuemax": dcap, "aria-valuenow": dspent, "aria-label": "δ spent against the per-patient δ cap" },
        h("span", { style: `width:${dcap > 0 ? Math.min(100, (100 * dspent) / dcap).toFixed(1) : 100}%` }))));
  }
  if (!projects.length) out.push(h("p", { class: "muted" }, steward ? "No projects yet." : "You belong to no project yet: request one."));
  const histories = await Promise.all(projects.map((p) => (["active", "suspended", "expired", "closed"].includes(p.status) ? api("GET", `/v1/projects/${p.id}/queries`) : Promise.resolve([]))));
  const rows = projects.map((p, i) => h("tr", { "data-project": p.name },
    h("td", {}, `#${p.id}`), h("td", {}, p.title || p.name, h("div", { class: "muted" }, p.name)), h("td", {}, badge(p.status)),
    h("td", { class: "num" }, fmt(p.epsilon)), h("td", { class: "num" }, fmt(p.epsilon_spent)), h("td", { class: "num" }, fmt(Math.max(p.epsilon - p.epsilon_spent, 0))),
    h("td", { class: "num hide-narrow" }, histories[i].length), h("td", { class: "hide-narrow" }, p.expires_at ? when(p.expires_at) : "–"),
    steward ? h("td", {}, transitions(p)) : null));
  if (projects.length) {
    out.push(h("div", { class: "card table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "project"), h("th", {}, "status"), h("th", { class: "num" }, "ε granted"),
        h("th", { class: "num" }, "ε spent"), h("th", { class: "num" }, "ε left"), h("th", { class: "num hide-narrow" }, "queries"), h("th", { class: "hide-narrow" }, "expires"),
        steward ? h("th", {}, "actions") : null)),
      h("tbody", {}, rows))));
    out.push(h("section", { class: "card chart", id: "burn-down" }, h("h3", {}, "Budget burn-down: ε spent over time"), burnDown(projects, histories)));
  }
  if (!steward) {
    for (const [i, p] of projects.entries()) {
      if (!histories[i].length) continue;
      out.push(h("section", { class: "card table-wrap" }, h("h3", {}, `Query history: ${p.title || p.name}`),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "when"), h("th", { class: "num" }, "ε"), h("th", {}, "status"), h("th", {}, "SQL"))),
          h("tbody", {}, histories[i].map((q) => h("tr", {}, h("td", {}, q.id), h("td", {}, when(q.created_at)), h("td", { class: "num" }, fmt(q.epsilon)), h("td", {}, badge(q.status)), h("td", { class: "sql" }, q.sql)))))));
    }
  }
  return out;
}

function transitions(p) {
  const act = (verb, label, cls) => h("button", { type: "button", class: cls || "secondary", "data-action": verb, onclick: async () => {
    if (verb === "close" && !confirm(`Close "${p.title || p.name}" for good?`)) return;
    if (await attempt(() => api("POST", `/v1/projects/${p.id}/${verb}`, {}), `${label}: ${p.title || p.name}.`)) route();
  } }, label);
  const buttons = [];
  if (p.status === "active") buttons.push(act("suspend", "Suspend"));
  if (p.status === "suspended") buttons.push(act("resume", "Resume"));
  if (["pending", "active", "suspended", "expired"].includes(p.status)) buttons.push(act("close", "Close", "danger"));
  return h("div", { class: "actions" }, buttons);
}

// Cumulative ε per project against time, with each project's grant as a dashed line.
function burnDown(projects, histories) {
  const W = 720, H = 240, L = 48, R = 12, T = 12, B = 28;
  const series = projects.map((p, i) => {
    let total = 0;
    const pts = histories[i].map((q) => ({ t: new Date(q.created_at).getTime(), e: (total += q.epsilon) }));
    return { p, pts };
  }).filter((s) => s.pts.length);
  if (!series.length) return h("p", { class: "muted" }, "Nothing spent yet.");
  const ts = series.flatMap((s) => s.pts.map((x) => x.t));
  const t0 = Math.min(...ts), t1 = Math.max(...ts, t0 + 1000);
  const emax = Math.max(...series.map((s) => Math.max(s.p.epsilon, s.pts[s.pts.length - 1].e))) || 1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (e) => H - B - (e / emax) * (H - T - B);
  const colors = ["#0b5cad", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e"];
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Cumulative ε spent per project over time" },
    svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }), svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    svg("text", { x: 4, y: y(emax) + 4 }, fmt(emax, 2)), svg("text", { x: 4, y: H - B + 4 }, "0"),
    svg("text", { x: L, y: H - 8 }, new Date(t0).toLocaleTimeString()), svg("text", { x: W - R - 70, y: H - 8 }, new Date(t1).toLocaleTimeString()));
  const legend = h("ul", { class: "muted" });
  series.forEach((s, i) => {
    const c = colors[i % colors.length];
    let d = `M ${x(s.pts[0].t)} ${y(0)}`;
    for (const pt of s.pts) d += ` H ${x(pt.t)} V ${y(pt.e)}`;
    d += ` H ${W - R}`;
    g.append(svg("path", { d, fill: "none", stroke: c, "stroke-width": 2, "data-project": s.p.name }));
    g.append(svg("line", { x1: L, x2: W - R, y1: y(s.p.epsilon), y2: y(s.p.epsilon), stroke: c, "stroke-dasharray": "4 4", "stroke-width": 1 }));
    legend.append(h("li", { style: `color:${c}` }, `${s.p.title || s.p.name}: ε ${fmt(s.pts[s.pts.length - 1].e)} spent of ${fmt(s.p.epsilon)} (dashed)`));
  });
  return h("div", {}, g, legend);
}

// ---- researcher: request a project -----------------------------------------------------------

async function requestView() {
  const tables = await api("GET", "/v1/tables");
  const form = h("form", { class: "card", id: "request-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = {
      title: f.title.value,
      purpose: f.purpose.value,
      tables: [...f.querySelectorAll("input[name=tables]:checked")].map((c) => c.value),
      epsilon: Number(f.epsilon.value),
      delta: Number(f.delta.value),
      duration_days: Number(f.duration.value),
      members: f.members.value.split(",").map((m) => m.trim()).filter(Boolean),
    };
    const p = await attempt(() => api("POST", "/v1/projects", body));
    if (p) {
      state.keepAlert = true;
      location.hash = "#/projects";
      showInfo(`Requested "${p.title}" (#${p.id}); a steward will decide.`);
    }
  } },
    h("h2", {}, "Request a project"),
    h("label", { for: "req-title" }, "Title"), h("input", { id: "req-title", name: "title", required: true, maxlength: 200 }),
    h("label", { for: "req-purpose" }, "Purpose and protocol"), h("textarea", { id: "req-purpose", name: "purpose", required: true }),
    h("fieldset", {}, h("legend", {}, "Tables"), tables.map((t) => h("label", {}, h("input", { type: "checkbox", name: "tables", value: t.name }), t.name))),
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: "req-epsilon" }, "ε (total privacy budget)"), h("input", { id: "req-epsilon", name: "epsilon", type: "number", step: "any", min: "0", value: "1", required: true })),
      h("div", {}, h("label", { for: "req-delta" }, "δ (for grouping without a public domain)"), h("input", { id: "req-delta", name: "delta", type: "number", step: "any", min: "0", value: "0", required: true })),
      h("div", {}, h("label", { for: "req-duration" }, "Duration (days)"), h("input", { id: "req-duration", name: "duration", type: "number", min: "1", max: "3650", value: "90", required: true })),
      h("div", {}, h("label", { for: "req-members" }, "Co-investigators (account names, comma-separated)"), h("input", { id: "req-members", name: "members" }))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Send the request")));
  return [form];
}

// ---- audit log ----------------------------------------------------------------------------------

async function auditView(params) {
  const verification = await api("GET", "/v1/audit/verify");
  const chain = verification.broken
    ? h("div", { class: "chain bad", id: "chain-status", role: "status" }, `Audit chain BROKEN at entry ${verification.broken.id}: ${verification.broken.reason}`)
    : h("div", { class: "chain ok", id: "chain-status", role: "status" }, `Audit chain verified: ${verification.entries} entries, head ${verification.head.slice(0, 16)}…`);
  const q = new URLSearchParams();
  for (const k of ["project", "actor", "outcome", "action"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("limit", "50");
  if (params.get("after")) q.set("after", params.get("after"));
  const page = await api("GET", `/v1/audit?${q}`);
  const filters = h("form", { class: "filters", "aria-label": "Filter the audit log", onsubmit: (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams();
    for (const k of ["project", "actor", "outcome", "action"]) if (ev.target[k].value) f.set(k, ev.target[k].value);
    location.hash = `#/audit?${f}`;
  } },
    ["project", "actor", "action"].map((k) => h("div", {}, h("label", { for: `f-${k}` }, k), h("input", { id: `f-${k}`, name: k, value: params.get(k) || "" }))),
    h("div", {}, h("label", { for: "f-outcome" }, "outcome"), h("select", { id: "f-outcome", name: "outcome" },
      ["", "ok", "refused", "failed", "denied"].map((o) => h("option", { value: o, selected: (params.get("outcome") || "") === o }, o || "any")))),
    h("div", {}, h("button", { type: "submit" }, "Filter")));
  const rows = page.entries.map((e) => h("tr", { "data-action": e.action },
    h("td", { class: "num" }, e.id), h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.project || ""),
    h("td", {}, badge(e.outcome)), h("td", { class: "num" }, e.epsilon === null ? "" : fmt(e.epsilon)),
    h("td", { class: "hide-narrow" }, e.sql ? h("div", { class: "sql" }, e.sql) : null, e.detail ? h("div", { class: "muted" }, e.detail) : null)));
  const nav = h("div", { class: "actions" });
  const base = new URLSearchParams(params);
  base.delete("after");
  if (params.get("after")) nav.append(h("button", { type: "button", class: "secondary", onclick: () => { const prev = state.auditStack.pop(); const b = new URLSearchParams(base); if (prev) b.set("after", prev); location.hash = `#/audit?${b}`; } }, "← Newer… (back)"));
  if (page.next_after) nav.append(h("button", { type: "button", class: "secondary", onclick: () => { state.auditStack.push(params.get("after") || ""); const b = new URLSearchParams(base); b.set("after", page.next_after); location.hash = `#/audit?${b}`; } }, "Next page →"));
  return [h("h2", {}, "Audit log"), chain, filters,
    h("div", { class: "card table-wrap" }, h("table", { id: "audit-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "when"), h("th", {}, "actor"), h("th", {}, "action"), h("th", {}, "project"), h("th", {}, "outcome"), h("th", { class: "num" }, "ε"), h("th", { class: "hide-narrow" }, "SQL / detail"))),
      h("tbody", {}, rows)), page.entries.length ? null : h("p", { class: "muted" }, "No entry matches."), nav)];
}

// ---- catalog ------------------------------------------------------------------------------------

async function catalogView() {
  const tables = await api("GET", "/v1/tables");
  const out = [h("h2", {}, "Catalog"), h("p", { class: "muted" }, "What may be asked about: columns, privacy roles, bounds and public domains. Never rows.")];
  for (const t of tables) {
    out.push(h("section", { class: "card table-wrap", "data-table": t.name },
      h("h3", {}, t.name), t.description ? h("p", { class: "muted" }, t.description) : null,
      h("p", {}, `A patient contributes at most ${t.max_rows_per_unit} rows and ${t.max_groups_per_unit} groups to a query.`),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "column"), h("th", {}, "type"), h("th", {}, "privacy role"), h("th", {}, "bounds"), h("th", { class: "hide-narrow" }, "public domain"))),
        h("tbody", {}, t.columns.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.type), h("td", {}, c.privacy_role),
          h("td", {}, c.bounds ? `[${c.bounds[0]}, ${c.bounds[1]}]` : ""),
          h("td", { class: "hide-narrow" }, c.domain ? (c.domain.range ? `${c.domain.range[0]}…${c.domain.range[1]}` : `${c.domain.size} values`) : "")))))));
  }
  if (state.me.role === "steward") {
    const ingests = await api("GET", "/v1/ingests");
    out.push(h("section", { class: "card table-wrap", id: "ingests" }, h("h3", {}, "Ingest history"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "when"), h("th", {}, "table"), h("th", {}, "file"), h("th", { class: "num" }, "rows"), h("th", { class: "num" }, "bytes"), h("th", {}, "by"))),
        h("tbody", {}, ingests.map((i) => h("tr", {}, h("td", {}, when(i.committed_at)), h("td", {}, i.table), h("td", {}, i.source), h("td", { class: "num" }, fmt(i.rows, 0)), h("td", { class: "num" }, fmt(i.bytes, 0)), h("td", {}, i.actor)))))));
  }
  return out;
}

// ---- start ----------------------------------------------------------------------------------------

document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.token = ev.target.token.value.trim();
  const me = await attempt(() => api("GET", "/v1/me"));
  if (!me) { state.token = null; return; }
  sessionStorage.setItem("secretum.token", state.token);
  ev.target.reset();
  state.me = me;
  location.hash = (ROUTES[me.role][0] || ["#/"])[0];
  route();
});
document.getElementById("sign-out").addEventListener("click", () => { location.hash = ""; signOut(); clearAlert(); });
// Moving to another page clears the last message; actions that re-render keep theirs.
window.addEventListener("hashchange", () => {
  if (!state.keepAlert) clearAlert();
  state.keepAlert = false;
  route();
});

(async () => {
  if (state.token) state.me = await attempt(() => api("GET", "/v1/me"));
  route();
})();
