// The status page: polls status.json every second and shows one stream's events
// live, received by the browser's own EventSource from the admin listener's
// SSE sink for that stream (events/<stream>), which resumes with Last-Event-ID
// after a drop like any other sink. Event data is shown as text, never as HTML.
"use strict";

const MAX_EVENTS = 200;
const live = { source: null, stream: null, received: 0, opens: 0, ids: new Set() };
let streams = [];

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
      s.has_events ? fmtSeconds(s.last_event_age) + " ago" : "none yet", s.last_event_id || "-"];
  }));
  fillTable("sinks", status.sinks.map((s) => [
    s.name, s.type, s.stream, s.path || "-", { text: fmtNum(s.subscribers), cls: "n" },
    { text: fmtNum(s.events_in), cls: "n" }, { text: fmtNum(s.events_out), cls: "n" },
    { text: fmtBytes(s.bytes_written), cls: "n" }, { text: fmtNum(s.dropped_slow), cls: "n" },
    { text: fmtNum(s.events_replayed), cls: "n" },
    { text: s.lag && s.lag.count ? fmtSeconds(s.lag.p50) : "-", cls: "n" },
    { text: s.lag && s.lag.count ? fmtSeconds(s.lag.p99) : "-", cls: "n" },
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

document.getElementById("stream-select").addEventListener("change", (e) => {
  location.hash = "stream=" + encodeURIComponent(e.target.value);
});
window.addEventListener("hashchange", () => {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("stream");
  if (wanted && wanted !== live.stream) watch(wanted);
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
