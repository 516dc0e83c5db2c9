// The console's pages: each reads one JSON endpoint of the admin port and draws it.
// No framework, nothing loaded from elsewhere; text is set with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

async function getJson(path) {
  const answer = await fetch(path, { cache: "no-store" });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || `${path} answered ${answer.status}`);
  return body;
}

function element(tag, attributes = {}, text = "") {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function showMessage(text) {
  document.getElementById("message").textContent = text;
}

function repeat(task, seconds) {
  const run = () => task().then(() => showMessage(""), (error) => showMessage(error.message));
  run();
  setInterval(run, seconds * 1000);
}

// -- service graph ---------------------------------------------------------------

const COLUMN = 300, ROW = 110, MARGIN = 80;

// Columns by the longest path from a node nobody calls (cycles cut at the node count).
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const e of edges) {
      const next = depth.get(e.source) + 1;
      if (next > depth.get(e.target) && next < nodes.length) {
        depth.set(e.target, next);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const rows = new Map();
  const place = new Map();
  for (const n of nodes) {
    const column = depth.get(n.id);
    const row = rows.get(column) || 0;
    rows.set(column, row + 1);
    place.set(n.id, { x: MARGIN + column * COLUMN, y: MARGIN + row * ROW });
  }
  return place;
}

function percent(fraction) {
  return `${(100 * fraction).toFixed(fraction > 0 && fraction < 0.01 ? 2 : 0)}%`;
}

function edgeLabel(e) {
  const parts = [`${e.rps.toFixed(2)} rps`, `${percent(e.error_rate)} err`];
  if (e.p99_ms !== null) parts.push(`p99 ${e.p99_ms.toFixed(e.p99_ms < 10 ? 1 : 0)} ms`);
  return parts.join(" · ");
}

function drawLock(group, x, y) {
  const lock = element("svg:g", { class: "lock", transform: `translate(${x},${y})` });
  lock.append(element("svg:title", {}, "mTLS: every request the server saw"));
  lock.append(element("svg:path", { d: "M2 6 V3 a3 3 0 0 1 6 0 V6", class: "shackle" }));
  lock.append(element("svg:rect", { x: 0, y: 6, width: 10, height: 7, rx: 1 }));
  group.append(lock);
}

function drawGraph(graph) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  document.getElementById("prometheus").textContent = graph.prometheus;
  if (graph.nodes.length === 0) {
    showMessage(`No requests in the last ${graph.window} (istio_requests_total).`);
    return;
  }
  const place = layout(graph.nodes, graph.edges);
  const xs = [...place.values()].map((p) => p.x), ys = [...place.values()].map((p) => p.y);
  svg.setAttribute("width", Math.max(...xs) + 2 * MARGIN + 60);
  svg.setAttribute("height", Math.max(...ys) + MARGIN);
  const defs = element("svg:defs");
  const marker = element("svg:marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8,
    orient: "auto-start-reverse",
  });
  marker.append(element("svg:path", { d: "M 0 0 L 10 5 L 0 10 z" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of graph.edges) {
    const from = place.get(e.source), to = place.get(e.target);
    const health = e.error_rate > 0.1 ? "bad" : e.error_rate > 0 ? "degraded" : "healthy";
    const group = element("svg:g", {
      class: `edge ${health}`, "data-source": e.source, "data-target": e.target,
    });
    const dx = to.x - from.x, dy = to.y - from.y, length = Math.hypot(dx, dy) || 1;
    const r = 24;
    group.append(element("svg:line", {
      x1: from.x + (dx * r) / length, y1: from.y + (dy * r) / length,
      x2: to.x - (dx * r) / length, y2: to.y - (dy * r) / length, "marker-end": "url(#arrow)",
    }));
    // The label runs along the edge, just above it (never upside down).
    const mx = (from.x + to.x) / 2, my = (from.y + to.y) / 2;
    let angle = (Math.atan2(dy, dx) * 180) / Math.PI;
    if (angle > 90 || angle < -90) angle += 180;
    const along = element("svg:g", { transform: `rotate(${angle.toFixed(1)} ${mx} ${my})` });
    along.append(element("svg:text", { x: mx, y: my - 7, "text-anchor": "middle", class: "label" },
      edgeLabel(e)));
    if (e.mtls === 1) drawLock(along, mx - 5, my + 3);
    group.append(along);
    group.append(element("svg:title", {},
      `${e.source} → ${e.target} (${e.protocol || "?"}, reported by ${e.reporter})`));
    svg.append(group);
  }
  for (const n of graph.nodes) {
    const { x, y } = place.get(n.id);
    const group = element("svg:g", { class: `node ${n.kind}`, "data-id": n.id });
    if (n.kind === "service") {
      group.append(element("svg:polygon", {
        points: `${x},${y - 24} ${x + 24},${y} ${x},${y + 24} ${x - 24},${y}`,
      }));
    } else {
      group.append(element("svg:circle", { cx: x, cy: y, r: 22 }));
    }
    group.append(element("svg:text", { x, y: y + 42, "text-anchor": "middle", class: "name" },
      n.name));
    if (n.namespace) {
      group.append(element("svg:text", { x, y: y + 56, "text-anchor": "middle", class: "ns" },
        n.namespace));
    }
    group.append(element("svg:title", {}, n.host || n.id));
    svg.append(group);
  }
}

function graphPage() {
  const picker = document.getElementById("window");
  const load = async () => drawGraph(await getJson(`/api/graph?window=${picker.value}`));
  picker.addEventListener("change", () => load().catch((error) => showMessage(error.message)));
  repeat(load, 5);
}

// -- config status -----------------------------------------------------------------

function ago(seconds) {
  const age = Math.max(0, Date.now() / 1000 - seconds);
  return age < 120 ? `${age.toFixed(0)} s ago` : `${(age / 60).toFixed(0)} min ago`;
}

function typeCell(name, state) {
  const item = element("li", { "data-type": name });
  if (state.nacked !== null) {
    item.className = "nack";
    item.append(element("strong", {}, `${name} NACK ${state.nacked}: `));
    item.append(element("span", { class: "reason" }, state.error || ""));
    if (state.acked) item.append(` (still using ${state.acked})`);
  } else if (state.acked) {
    item.className = "ack";
    item.textContent = `${name} ACK ${state.acked}`;
    if (state.sent && state.sent !== state.acked) item.textContent += ` (sent ${state.sent})`;
  } else {
    item.className = "pending";
    item.textContent = `${name} sent ${state.sent || "-"}, not yet answered`;
  }
  return item;
}

function drawConfigErrors(problems) {
  document.getElementById("config-errors").hidden = problems.length === 0;
  const body = document.querySelector("#errors tbody");
  body.replaceChildren(...problems.map((p) => {
    const row = element("tr", { class: "config-error" });
    const where = p.line === null || p.line === undefined ? p.file : `${p.file}:${p.line}`;
    const message = p.code ? `${p.message} (${p.code})` : p.message;
    for (const [key, text] of [["file", where], ["kind", p.kind], ["name", p.name],
      ["field", p.field], ["message", message]]) {
      row.append(element("td", { "data-key": key }, text));
    }
    return row;
  }));
}

function clientKind(c) {
  // `protocol` (SotW or Delta) only when the control plane's record has it.
  return c.protocol ? `${c.kind} · ${c.protocol}` : c.kind;
}

function drawStatus(status) {
  document.getElementById("version").textContent = status.version;
  drawConfigErrors(status.config_problems || []);
  const problems = document.getElementById("problems");
  problems.replaceChildren(
    ...status.config_warnings.map((p) => element("li", { class: "warning" }, `warning: ${p}`)),
  );
  const body = document.querySelector("#clients tbody");
  body.replaceChildren();
  for (const c of status.clients) {
    const row = element("tr", { class: "client", "data-node": c.node_id });
    const identity = c.spiffe || (c.namespace ? `${c.namespace}/${c.service_account}` : "");
    for (const text of [c.node_id, clientKind(c), identity, c.peer,
      new Date(c.connected_at * 1000).toLocaleTimeString(), ago(c.last_seen)]) {
      row.append(element("td", {}, text));
    }
    const types = element("ul", { class: "types" });
    for (const [name, state] of Object.entries(c.types)) types.append(typeCell(name, state));
    const cell = element("td");
    cell.append(types);
    row.append(cell);
    body.append(row);
  }
  if (status.clients.length === 0) showMessage("No xDS client is connected.");
}

function statusPage() {
  repeat(async () => drawStatus(await getJson("/status")), 2);
}

// -- simulate ------------------------------------------------------------------------

function resultRows(result) {
  const rows = [["request", result.request], ["authority", result.authority]];
  if (result.route) rows.push(["route", result.route]);
  rows.push(["outcome", result.outcome]);
  if (result.timeout !== undefined && result.timeout !== null) rows.push(["timeout", `${result.timeout}s`]);
  for (const effect of result.effects || []) rows.push(["effect", effect]);
  for (const cluster of result.clusters || []) {
    rows.push(["cluster", `${cluster.percent}% ${cluster.name}`]);
    const endpoints = cluster.endpoints.length ? cluster.endpoints
      : [{ address: "(none: fails with UH)", health: "" }];
    for (const e of endpoints) rows.push(["endpoint", `${e.address} ${e.health}`.trim()]);
  }
  for (const verdict of result.authorization || []) rows.push(["authz", verdict]);
  return rows;
}

function headerPairs(text) {
  return text.split("\n").filter((line) => line.trim()).map((line) => {
    const at = line.indexOf(":");
    if (at < 1) throw new Error(`a header line wants name: value, got ${JSON.stringify(line)}`);
    return [line.slice(0, at).trim(), line.slice(at + 1).trim()];
  });
}

async function runSimulation(form) {
  const query = new URLSearchParams({
    method: form.method.value, url: form.url.value,
    headers: JSON.stringify(headerPairs(form.headers.value)),
  });
  if (form.from.value.trim()) query.set("from", form.from.value.trim());
  const result = await getJson(`/simulate?${query}`);
  const body = document.querySelector("#result tbody");
  body.replaceChildren(...resultRows(result).map(([name, value]) => {
    const row = element("tr", { class: `row-${name}` });
    row.append(element("th", {}, name), element("td", {}, String(value)));
    return row;
  }));
}

function simulatePage() {
  const form = document.getElementById("simulate-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showMessage("");
    document.querySelector("#result tbody").replaceChildren();
    runSimulation(form).catch((error) => showMessage(error.message));
  });
}

// One document, three pages: the path says which section shows.
const PAGES = { graph: graphPage, status: statusPage, simulate: simulatePage };
const current = location.pathname.split("/")[2] || "graph";
document.getElementById(`page-${current}`).hidden = false;
document.querySelector(`nav a[data-page="${current}"]`).setAttribute("aria-current", "page");
document.title = `proxyless-mesh console: ${document.querySelector(`nav a[data-page="${current}"]`).textContent}`;
PAGES[current]();
