// The status page: polls status.json every second and shows one stream's events
// live, received by the browser's own EventSource from the admin listener's
// SSE sink for that stream (events/<stream>), which resumes with Last-Event-ID
// after a drop like any other sink. Event data is shown as text, never as HTML.
// Charts: the daemon keeps the last minutes of every figure (charts.json); the page
// fetches them whole once, then polls for the samples taken since (?after=), and draws
// them with charts.js: a sparkline per table row, larger charts for the one selected
// (#chart=daemon, source:Name or sink:Name in the URL, or a click on its row).
"use strict";

const MAX_EVENTS = 200;
const live = { source: null, stream: null, received: 0, opens: 0, ids: new Set() };
let streams = [];
const charts = { interval: 1, points: 900, latest: null, times: [], daemon: {}, sinks: {}, sources: {} };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmtNum(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"); }
function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtRate(n) { return (n >= 100 ? n.toFixed(0) : n.toFixed(n >= 10 ? 1 : 2)) + "/s"; }
// each charted figure: its heading and how its values read
const FIGURES = {
  events_in: ["events in", fmtRate], events_out: ["events out", fmtRate], subscribers: ["subscribers", fmtNum],
  dropped_slow: ["slow drops", fmtRate], rejected: ["rejections", fmtRate], reconnects: ["reconnects", fmtRate],
  lag_p99: ["lag p99", fmtSeconds],
};
function badge(text, kind) { return el("span", text, "badge " + kind); }

function fillTable(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) {
      if (cell instanceof Node) { const td = el("td"); td.append(cell); tr.append(td); }
      else if (typeof cell === "object" && cell !== null) { tr.append(el("td", cell.text, cell.cls)); }
      else tr.append(el("td", cell));
    }
    return tr;
  }));
}

function sourceState(s) {
  if (s.type !== "sse") return badge("listening", "ok");
  if (s.stopped) return badge("stopped", "bad");
  if (s.connected) return badge("connected", "ok");
  return badge("down " + fmtSeconds(s.down_for || 0), "bad");
}

function render(status) {
  const ready = status.ready;
  const badgeNode = document.getElementById("ready");
  badgeNode.textContent = ready.ready ? "ready" : "not ready";
  badgeNode.className = "badge " + (ready.ready ? "ok" : "bad");
  document.getElementById("not-ready").replaceChildren(...ready.not_ready.map((text) => el("li", text)));
  document.getElementById("uptime").textContent = fmtSeconds(status.uptime);
  document.getElementById("files").textContent = status.files.join(", ");
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();

  fillTable("sources", status.sources.map((s) => {
    const rejected = Object.entries(s.rejected).map(([r, n]) => r + " " + n).join(", ");
    return [s.name, s.type, s.stream, s.url, sourceState(s), { text: fmtNum(s.events_in), cls: "n" },
      rejected || "0", { text: fmtNum(s.reconnects), cls: "n" },
      s.has_events ? fmtSeconds(s.last_event_age) + " ago" : "none yet", s.last_event_id || "-",
      spark("sources", s.name, "events_in")];
  }));
  fillTable("sinks", status.sinks.map((s) => [
    s.name, s.type, s.stream, s.path || "-", { text: fmtNum(s.subscribers), cls: "n" },
    { text: fmtNum(s.events_in), cls: "n" }, { text: fmtNum(s.events_out), cls: "n" },
    { text: fmtBytes(s.bytes_written), cls: "n" }, { text: fmtNum(s.dropped_slow), cls: "n" },
    { text: fmtNum(s.events_replayed), cls: "n" },
    { text: s.lag && s.lag.count ? fmtSeconds(s.lag.p50) : "-", cls: "n" },
    { text: s.lag && s.lag.count ? fmtSeconds(s.lag.p99) : "-", cls: "n" },
    spark("sinks", s.name, "events_out"),
  ]));
  const viewers = Object.fromEntries(status.admin.live.map((l) => [l.stream, l.subscribers]));
  fillTable("streams", status.streams.map((s) => [
    s.name, s.schema, s.sources.join(", ") || "-", s.routes_in.join(", ") || "-",
    s.sinks.join(", ") || "-", s.routes_out.join(", ") || "-", { text: fmtNum(viewers[s.name] || 0), cls: "n" },
  ]));
  fillTable("listeners", status.listeners.map((l) => [
    l.host + ":" + l.port, l.bound ? badge("bound", "ok") : badge("not bound", "bad"), l.serves.join("; "),
    Object.entries(l.protocols).map(([p, n]) => (p === "h2" ? "HTTP/2" : "HTTP/1.1") + ": " + fmtNum(n)).join(", "),
  ]));

  streams = status.admin.live;
  const select = document.getElementById("stream-select");
  const names = streams.map((l) => l.stream);
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((name) => { const o = el("option", name); o.value = name; return o; }));
  }
  const wanted = new URLSearchParams(location.hash.slice(1)).get("stream") || names[0];
  if (wanted && wanted !== live.stream && names.includes(wanted)) watch(wanted);
  if (live.stream) select.value = live.stream;
}

function hashParam(name) { return new URLSearchParams(location.hash.slice(1)).get(name); }
function setHashParam(name, value) {
  const params = new URLSearchParams(location.hash.slice(1));
  params.set(name, value);
  location.hash = params.toString();
}

// A table row's sparkline: one figure of one connector over the charts' window.
function spark(group, name, figure) {
  const values = (charts[group][name] || {})[figure];
  if (!values || charts.latest === null) return "-";
  return sparkline(charts.times, values, charts.latest, charts.points * charts.interval, FIGURES[figure][0] + " per second");
}

// Samples from charts.json appended to what the page has, the oldest beyond the window let go.
function mergeCharts(update) {
  if (charts.latest !== null && (update.latest === null || update.latest < charts.latest)) {
    Object.assign(charts, { latest: null, times: [], daemon: {}, sinks: {}, sources: {} });  // another daemon: start over
    return;
  }
  const before = charts.times.length;
  const drop = Math.max(0, before + update.times.length - update.points);
  const merge = (old, fresh) => Object.fromEntries(Object.entries(fresh).map(([figure, values]) =>
    [figure, (old[figure] || new Array(before).fill(null)).concat(values).slice(drop)]));
  charts.times = charts.times.concat(update.times).slice(drop);
  charts.daemon = merge(charts.daemon, update.daemon);
  for (const group of ["sinks", "sources"]) {
    charts[group] = Object.fromEntries(Object.entries(update[group]).map(([name, figures]) =>
      [name, merge(charts[group][name] || {}, figures)]));
  }
  Object.assign(charts, { interval: update.interval, points: update.points, latest: update.latest });
}

function renderCharts() {
  const choices = [["daemon", "the daemon"],
    ...Object.keys(charts.sources).map((n) => ["source:" + n, "source " + n]),
    ...Object.keys(charts.sinks).map((n) => ["sink:" + n, "sink " + n])];
  const select = document.getElementById("chart-select");
  if ([...select.options].map((o) => o.value).join("\n") !== choices.map((c) => c[0]).join("\n")) {
    select.replaceChildren(...choices.map(([value, text]) => { const o = el("option", text); o.value = value; return o; }));
  }
  let wanted = hashParam("chart") || "daemon";
  if (!choices.some((c) => c[0] === wanted)) wanted = "daemon";
  select.value = wanted;
  const [group, ...rest] = wanted.split(":");
  const figures = group === "daemon" ? charts.daemon : (charts[group + "s"][rest.join(":")] || {});
  const span = charts.points * charts.interval;
  document.getElementById("chart-span").textContent = fmtSeconds(span);
  const box = document.getElementById("charts");
  box.dataset.selected = wanted;
  box.replaceChildren(...Object.entries(figures).map(([figure, values]) =>
    lineChart(figure, FIGURES[figure][0], charts.times, values, charts.latest, span, FIGURES[figure][1])));
}

async function pollCharts() {
  try {
    const query = charts.latest === null ? "" : "?after=" + charts.latest;
    const response = await fetch("charts.json" + query, { cache: "no-store" });
    if (response.ok) {
      mergeCharts(await response.json());
      renderCharts();
    }
  } catch (error) {
    // status.json's poll shows the admin as unreachable
  }
  setTimeout(pollCharts, Math.min(Math.max(charts.interval, 0.25), 5) * 1000);
}

function setLiveState(text, kind) {
  const node = document.getElementById("live-state");
  node.textContent = text;
  node.className = "badge " + kind;
}

function watch(stream) {
  const entry = streams.find((l) => l.stream === stream);
  if (!entry) return;
  if (live.source) live.source.close();
  live.stream = stream;
  live.received = 0;
  live.ids = new Set();
  document.getElementById("events").replaceChildren();
  document.getElementById("live-received").textContent = "0";
  // relative, so the page also works behind a proxy that mounts it under a path
  const source = new EventSource(entry.path.replace(/^\//, ""));
  live.source = source;
  setLiveState("connecting", "warn");
  source.onopen = () => {
    live.opens += 1;
    document.getElementById("live-opens").textContent = String(live.opens);
    setLiveState("open", "ok");
  };
  source.onerror = () => {
    setLiveState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting", "bad");
  };
  source.onmessage = (event) => {
    live.received += 1;
    live.ids.add(event.lastEventId);
    document.getElementById("live-received").textContent = String(live.received);
    const item = el("li");
    item.dataset.id = event.lastEventId;
    item.append(el("span", new Date().toLocaleTimeString(), "at"), el("span", event.lastEventId, "id"), el("span", event.data, "data"));
    const list = document.getElementById("events");
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  };
}

document.getElementById("stream-select").addEventListener("change", (e) => setHashParam("stream", e.target.value));
document.getElementById("chart-select").addEventListener("change", (e) => setHashParam("chart", e.target.value));
for (const [table, group] of [["sources", "source"], ["sinks", "sink"]]) {
  document.getElementById(table).addEventListener("click", (e) => {
    const row = e.target.closest("tbody tr");
    if (row) setHashParam("chart", group + ":" + row.cells[0].textContent);
  });
}
window.addEventListener("hashchange", () => {
  const wanted = hashParam("stream");
  if (wanted && wanted !== live.stream) watch(wanted);
  renderCharts();
});

async function poll() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    render(await response.json());
  } catch (error) {
    const node = document.getElementById("ready");
    node.textContent = "admin unreachable";
    node.className = "badge bad";
  }
  setTimeout(poll, 1000);
}
poll();
pollCharts();
