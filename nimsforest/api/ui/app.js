// The NimsForest dashboard: the node's state from /ui/events, the leaves from
// /api/v1/leaves/tail, Soil from /api/v1/soil/*. No library, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fill(target, rows) {
  target.replaceChildren(...rows);
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function when(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) : "-";
}

// --- the node's state ------------------------------------------------------------------
const KIND_ORDER = ["source", "tree", "treehouse", "nim", "decomposer"];
const KIND_LABEL = {
  source: "Sources (into the River)", tree: "Trees (River → leaves)",
  treehouse: "TreeHouses (leaves → leaves)", nim: "Nims (leaves → decisions)",
  decomposer: "Decomposer (Humus → Soil)",
};
let previous = null; // the last state and its time, for the rates

// NATS subject matching: `*` one token, a final `>` one or more
function matches(pattern, subject) {
  const p = pattern.split("."), s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

// the components fed by what `comp` publishes (leaf consumers read `wind.<subject>`)
function downstream(comp, comps) {
  if (!comp.publishes) return [];
  const out = comp.publishes.startsWith("river.") ? comp.publishes : "wind." + comp.publishes;
  return comps.filter((c) => c !== comp && c.consumes && matches(c.consumes, out));
}

function rate(comp, field, now) {
  if (!previous) return "";
  const before = previous.counts[`${comp.kind}/${comp.name}/${field}`];
  const seconds = now - previous.at;
  if (before === undefined || seconds <= 0) return "";
  const r = (comp[field] - before) / seconds;
  return r > 0 ? ` (${r.toFixed(r < 10 ? 1 : 0)}/s)` : "";
}

function render(state) {
  const node = state.node;
  const cluster = state.cluster;
  $("#node-name").textContent = node.node;
  $("#node-mode").textContent = node.mode;
  const status = $("#node-status");
  status.textContent = node.status;
  status.className = "pill " + (state.node_ok ? "ok" : "bad");
  $("#cluster-status").textContent = `${cluster.status}, ${cluster.size ?? node.cluster.size} node(s)`;
  $("#sentence").textContent = cluster.last_sentence || node.cluster.status || "";
  $("#meta-leader").textContent = cluster.meta_leader || "none";
  $("#replicas").textContent = cluster.replication_factor ?? node.cluster.replication_factor;
  $("#witness").textContent = cluster.witness || "none";
  $("#witness-note").hidden = !cluster.witness;

  const peers = cluster.peers || [];
  // each node's own report (zone, CPU, memory, when it last reported): /api/v1/status's nodes
  const reports = Object.fromEntries((state.forest.nodes || []).map((n) => [n.node, n]));
  const figures = (name) => {
    const r = reports[name];
    if (!r) return [el("td", {}, "-"), el("td", {}, "-"), el("td", {}, "-"), el("td", {}, "no report")];
    const res = r.resources || {};
    return [el("td", {}, r.zone || "-"),
      el("td", {}, res.cpu_percent === null || res.cpu_percent === undefined ? "-" : `${res.cpu_percent.toFixed(1)}%`),
      el("td", {}, res.memory_bytes ? `${Math.round(res.memory_bytes / 1048576)} MiB` : "-"),
      el("td", { class: r.reporting ? "" : "bad" }, r.reporting ? `${Math.round(r.age)}s ago` : `silent ${Math.round(r.age)}s`)];
  };
  const row = (name, label, stateCell, address, routed) => el("tr", {
    "data-node": name, class: chosenNode === name ? "chosen" : "",
    onclick: () => chooseNode(chosenNode === name ? null : name),
  }, el("td", {}, ...label), stateCell, ...figures(name), el("td", {}, address), el("td", {}, routed));
  const me = row(node.node, [el("b", {}, node.node), " (this node)"],
    el("td", { class: state.node_ok ? "ok" : "bad" }, node.status), "-", "-");
  const known = new Set([node.node, ...peers.map((p) => p.name)]);
  fill($("#nodes"), [me, ...peers.map((p) => row(p.name, [p.name],
    el("td", { class: ["offline", "leaving", "kept"].includes(p.state) ? "bad" : "ok" }, p.state),
    p.address || "-", p.routed ? "yes" : "no")),
  // a node that reports but is not a peer here (a sidecar's NATS, a node just gone)
  ...Object.keys(reports).filter((n) => !known.has(n)).map((n) => row(n, [n],
    el("td", { class: reports[n].reporting ? "ok" : "bad" }, reports[n].reporting ? "reporting" : "silent"), "-", "-"))]);

  fill($("#streams"), (cluster.streams || []).map((s) => el("tr", { "data-stream": s.name },
    el("td", {}, s.name), el("td", {}, s.replicas), el("td", {}, s.leader || "none"),
    el("td", { class: s.current ? "ok" : "bad" }, s.current ? "yes" : "no"),
    el("td", { class: s.lagging.length ? "bad" : "" }, s.lagging.join(", ") || "-"),
    el("td", {}, s.messages), el("td", {}, s.consumers))));

  const forest = state.forest;
  const comps = forest.components;
  const failed = comps.filter((c) => c.state !== "running");
  const fs = $("#forest-status");
  fs.textContent = `${comps.length} components, ${failed.length ? failed.length + " not running" : "all running"}` +
    ` · control: ${forest.control.sentence}`;
  fs.className = failed.length ? "bad" : "";
  $("#forest-scope").textContent = forest.scope === "node"
    ? `as node ${forest.node} alone runs it (click it again for every node)`
    : `on ${(forest.nodes || []).filter((n) => n.reporting).length} node(s)`;

  const kinds = [...new Set([...KIND_ORDER, ...comps.map((c) => c.kind)])]
    .filter((k) => comps.some((c) => c.kind === k));
  const now = state.at;
  const columns = kinds.map((kind) => el("div", { class: "column" },
    el("h3", {}, KIND_LABEL[kind] || kind),
    ...comps.filter((c) => c.kind === kind).map((c) => el("div", {
      class: "card " + (c.state === "running" ? "" : "failed"), "data-component": `${c.kind}/${c.name}`,
    },
      el("div", { class: "title" }, el("b", {}, c.name), el("span", { class: "state" }, c.state)),
      c.consumes ? el("div", { class: "subject" }, "in: ", el("code", {}, c.consumes)) : null,
      c.publishes ? el("div", { class: "subject" }, "out: ", el("code", {}, c.publishes)) : null,
      ...downstream(c, comps).map((d) => el("div", { class: "edge" }, `→ ${d.kind} ${d.name}`)),
      el("div", { class: "counts" },
        `in ${c.events_in}${rate(c, "events_in", now)} · out ${c.events_out}${rate(c, "events_out", now)}`,
        c.errors ? el("span", { class: "bad" }, ` · ${c.errors} errors`) : "",
        c.dead ? el("span", { class: "bad" }, ` · ${c.dead} dead letters`) : "",
        c.dropped ? ` · ${c.dropped} dropped` : "",
        c.pending === null || c.pending === undefined ? "" : el("span", {
          class: "lag" + (c.pending ? " behind" : ""), "data-lag": c.pending,
          title: "its consumer's messages not yet delivered or not yet acknowledged",
        }, ` · lag ${c.pending}`)),
      ...elsewhere(c),
      c.last_error ? el("div", {
        class: "error" + (c.error_state === "cleared" ? " cleared" : ""),
        title: c.error_state === "cleared" ? "handled events successfully since" : "current",
      }, (c.error_state === "cleared" ? "cleared · " : "") +
        [c.last_error_node, ago(c.last_error_at, now)].filter(Boolean).join(" · ") +
        ": " + c.last_error) : null))));
  const graph = [];
  columns.forEach((col, i) => {
    if (i) graph.push(el("div", { class: "arrow" }, "→"));
    graph.push(col);
  });
  fill($("#graph"), graph);

  const counts = {};
  for (const c of comps) {
    counts[`${c.kind}/${c.name}/events_in`] = c.events_in;
    counts[`${c.kind}/${c.name}/events_out`] = c.events_out;
  }
  previous = { at: now, counts };
  loadAudit(forest.control.revision);
  // the letters are read again when a component gives one up (its `dead` count moves)
  loadDead(comps.map((c) => `${c.kind}/${c.name}:${c.dead}`).join(","));
}

// the nodes where a component's state is not the cluster's best: `failed on n3`
function elsewhere(c) {
  const odd = (c.nodes || []).filter((r) => r.reporting && r.state !== "running");
  if (!odd.length || odd.length === (c.nodes || []).length) return [];
  return [el("div", { class: "where" }, odd.map((r) => `${r.state} on ${r.node}`).join(", "))];
}

function ago(iso, now) {
  if (!iso) return "";
  const secs = Math.max(0, Math.round(now - Date.parse(iso) / 1000));
  const age = secs < 120 ? `${secs}s` : secs < 7200 ? `${Math.round(secs / 60)}m` : `${Math.round(secs / 3600)}h`;
  return `${when(iso).slice(11)} (${age} ago)`;
}

// ?node=NAME: the forest as that node alone runs it (its own report)
let chosenNode = new URLSearchParams(location.search).get("node");
let stateSource = null;

function chooseNode(name) {
  chosenNode = name;
  const url = new URL(location.href);
  if (name) url.searchParams.set("node", name); else url.searchParams.delete("node");
  history.replaceState(null, "", url);
  previous = null;
  watchState();
}

function watchState() {
  const live = $("#live");
  if (stateSource) stateSource.close();
  const source = new EventSource("/ui/events" + (chosenNode ? "?node=" + encodeURIComponent(chosenNode) : ""));
  stateSource = source;
  source.addEventListener("problem", (e) => {
    $("#forest-scope").textContent = JSON.parse(e.data).error;
  });
  source.addEventListener("state", (e) => {
    live.className = "live on";
    render(JSON.parse(e.data));
  });
  source.onerror = () => {
    live.className = "live off";
    live.textContent = "reconnecting…";
  };
  source.onopen = () => { live.textContent = "live"; };
}

// --- the leaves ------------------------------------------------------------------------
const MAX_LEAVES = 200;
let tail = null;

function openTail(pattern) {
  if (tail) tail.close();
  const status = $("#tail-status");
  status.textContent = "connecting…";
  tail = new EventSource("/api/v1/leaves/tail?pattern=" + encodeURIComponent(pattern));
  tail.addEventListener("open", (e) => {
    if (e.data) status.textContent = `listening on ${e.data}`;
  });
  tail.addEventListener("message", (e) => {
    const event = JSON.parse(e.data);
    const leaf = event.data || {};
    const detail = el("pre", { class: "json", hidden: "" }, json(event));
    const row = el("li", { "data-subject": event.subject, onclick: () => detail.toggleAttribute("hidden") },
      el("span", { class: "time" }, when(leaf.ts || event.received)), " ",
      el("b", {}, event.subject), " ", el("span", { class: "source" }, leaf.source || ""), " ",
      el("code", {}, JSON.stringify(leaf.data ?? leaf).slice(0, 160)), detail);
    const list = $("#tail");
    list.prepend(row);
    while (list.children.length > MAX_LEAVES) list.lastChild.remove();
  });
  tail.addEventListener("dropped", (e) => {
    $("#tail").prepend(el("li", { class: "bad" }, `${e.data} leaves were dropped (this page fell behind)`));
  });
  tail.onerror = () => { status.textContent = "reconnecting…"; };
}

// --- Soil ------------------------------------------------------------------------------
let selected = null;

async function getJSON(url) {
  const resp = await fetch(url, { credentials: "same-origin" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

async function loadKeys() {
  const prefix = $("#soil-prefix").value.trim();
  const list = $("#soil-keys");
  try {
    const keys = await getJSON("/api/v1/soil/keys?prefix=" + encodeURIComponent(prefix));
    if (!keys.length) {
      fill(list, [el("li", { class: "hint" }, prefix ? `no key starts with '${prefix}'` : "Soil is empty")]);
      return;
    }
    fill(list, keys.map((k) => el("li", {
      "data-key": k.key, class: k.key === selected ? "selected" : "", onclick: () => openKey(k.key),
    }, el("b", {}, k.key), el("span", { class: "rev" }, ` rev ${k.revision}`))));
  } catch (err) {
    fill(list, [el("li", { class: "bad" }, err.message)]);
  }
}

async function openKey(key) {
  selected = key;
  for (const li of document.querySelectorAll("#soil-keys li")) {
    li.classList.toggle("selected", li.dataset.key === key);
  }
  const pane = $("#soil-entry");
  try {
    const path = encodeURIComponent(key).replaceAll("%2F", "/");
    const [value, history] = await Promise.all([
      getJSON("/api/v1/soil/value/" + path), getJSON("/api/v1/soil/history/" + path)]);
    fill(pane, [
      el("h3", {}, key, el("small", {}, ` revision ${value.revision}, ${when(value.updated)} UTC`
        + (value.humus_seq ? `, written from Humus entry #${value.humus_seq}` : ""))),
      el("pre", { class: "json", id: "soil-value" }, json(value.value)),
      el("h3", {}, "Revisions"),
      el("table", {}, el("thead", {}, el("tr", {}, ...["rev", "op", "updated (UTC)", "humus", "value"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, ...history.slice().reverse().map((h) => el("tr", {},
        el("td", {}, h.revision), el("td", {}, h.operation), el("td", {}, when(h.updated)),
        el("td", {}, h.humus_seq ?? "-"),
        el("td", {}, el("code", {}, JSON.stringify(h.value).slice(0, 100)))))))]);
  } catch (err) {
    fill(pane, [el("p", { class: "bad" }, err.message)]);
  }
}

function watchSoil() {
  let pending = null;
  const source = new EventSource("/api/v1/soil/watch");
  source.addEventListener("change", (e) => {
    const change = JSON.parse(e.data);
    clearTimeout(pending);
    pending = setTimeout(loadKeys, 200);
    if (change.key === selected) openKey(selected);
  });
}

// --- the audit log ---------------------------------------------------------------------
let auditRevision = null;

async function loadAudit(revision) {
  if (revision === auditRevision) return;
  auditRevision = revision;
  const rows = $("#audit-rows");
  try {
    const records = await getJSON("/api/v1/audit?limit=15");
    if (!records.length) {
      fill(rows, [el("tr", {}, el("td", { colspan: "6", class: "hint" }, "no change yet"))]);
      return;
    }
    fill(rows, records.slice().reverse().map((r) => el("tr", {},
      el("td", {}, when(r.ts)), el("td", {}, r.node),
      el("td", {}, r.who.via + (r.who.address ? ` ${r.who.address}` : "") + (r.who.client ? ` ${r.who.client}` : "")),
      el("td", {}, r.action), el("td", {}, r.kind ? `${r.kind} ${r.name || ""}` : "-"),
      el("td", { class: r.ok ? "ok" : "bad" }, r.detail ? `${r.result}: ${r.detail}` : r.result))));
  } catch (err) {
    fill(rows, [el("tr", {}, el("td", { colspan: "6", class: "bad" }, err.message))]);
  }
}

// --- dead letters ----------------------------------------------------------------------
// A replay is a change: the page sends it with its cookie and the X-NimsForest-Page header,
// which a page of another site cannot send (the API answers no CORS preflight).
let deadSeen = null;
const deadOpen = new Set(); // the letters shown open stay open when the list is read again

async function postJSON(url) {
  const resp = await fetch(url, {
    method: "POST", credentials: "same-origin", headers: { "X-NimsForest-Page": "1" },
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

function letterBody(letter) {
  if (letter.data === null || letter.data === undefined) return `(base64) ${letter.data_base64}`;
  try { return json(JSON.parse(letter.data)); } catch { return letter.data; }
}

async function replay(url, button) {
  const status = $("#dead-status");
  button.disabled = true;
  try {
    const out = await postJSON(url);
    status.textContent = out.message;
    status.className = "ok";
  } catch (err) {
    status.textContent = err.message;
    status.className = "bad";
  }
  deadSeen = null;
  loadDead(null);
}

async function loadDead(signature) {
  if (signature !== null && signature === deadSeen) return;
  deadSeen = signature;
  const rows = $("#dead-rows");
  try {
    const doc = await getJSON("/api/v1/dead?limit=100");
    fill($("#dead-counts"), doc.counts.map((c) => el("span", {
      class: "dead-count", "data-dead-component": `${c.kind}/${c.name}`,
    }, `${c.kind} ${c.name}: ${c.count} `, el("button", {
      type: "button", class: "replay-all",
      onclick: (e) => replay(`/api/v1/dead/replay?kind=${encodeURIComponent(c.kind)}&name=${encodeURIComponent(c.name)}`, e.target),
    }, `Replay all ${c.count}`))));
    if (!doc.letters.length) {
      fill(rows, [el("tr", {}, el("td", { colspan: "8", class: "hint" }, "no dead letter"))]);
      return;
    }
    fill(rows, doc.letters.flatMap((d) => {
      const detail = el("tr", { class: "letter-body", ...(deadOpen.has(d.seq) ? {} : { hidden: "" }) }, el("td", { colspan: "8" },
        el("pre", { class: "json" }, letterBody(d)),
        el("div", { class: "hint" }, `${d.stream} #${d.stream_seq} on ${d.subject}, consumer ${d.consumer}`)));
      return [el("tr", {
        "data-dead": d.seq, class: "letter", onclick: () => {
          if (detail.toggleAttribute("hidden")) deadOpen.delete(d.seq); else deadOpen.add(d.seq);
        },
      }, el("td", {}, d.seq), el("td", {}, when(d.at)), el("td", {}, `${d.kind} ${d.name}`),
      el("td", {}, d.node), el("td", {}, d.reason), el("td", {}, d.attempts),
      el("td", { class: "bad" }, d.error.slice(0, 160)),
      el("td", {}, el("button", {
        type: "button", class: "replay",
        onclick: (e) => { e.stopPropagation(); replay(`/api/v1/dead/${d.seq}/replay`, e.target); },
      }, "Replay"))), detail];
    }));
  } catch (err) {
    fill(rows, [el("tr", {}, el("td", { colspan: "8", class: "bad" }, err.message))]);
  }
}

// --- start -----------------------------------------------------------------------------
$("#tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  openTail($("#tail-pattern").value.trim() || ">");
});
$("#tail-clear").addEventListener("click", () => fill($("#tail"), []));
$("#soil-form").addEventListener("submit", (e) => { e.preventDefault(); loadKeys(); });

watchState();
openTail(">");
loadKeys();
watchSoil();
