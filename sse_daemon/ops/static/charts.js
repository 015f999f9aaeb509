// Line charts drawn by hand as inline SVG, for the status page: a sparkline for a table
// cell and a larger chart with its scale. No library, no build step, nothing from another
// host. Values are numbers or null (nothing known then: the line breaks there); the x axis
// is time, the last `span` seconds up to `end`. Each chart keeps the values it drew in
// data-values (JSON), so what the page shows can be read back.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

// The path of a line through (time, value) points, broken where a value is null.
function linePath(times, values, end, span, width, height, top) {
  let d = "";
  let pen = false;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === null || value === undefined) { pen = false; continue; }
    const x = width - ((end - times[i]) / span) * width;
    if (x < 0) { pen = false; continue; }
    const y = height - (top > 0 ? (value / top) * (height - 2) : 0) - 1;
    d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    pen = true;
  }
  return d;
}

// The top of a chart's scale: 1, 2, 2.5 or 5 times a power of ten, above every value shown.
function niceTop(values) {
  const known = values.filter((v) => v !== null && v !== undefined);
  const max = known.length ? Math.max(...known) : 0;
  if (!(max > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(max)));
  return [1, 2, 2.5, 5, 10].map((step) => step * power).find((top) => top >= max);
}

function lastKnown(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

// A small chart for a table cell: the line only, its last value as the tooltip.
function sparkline(times, values, end, span, label) {
  const width = 120, height = 22;
  const node = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  node.dataset.values = JSON.stringify(values);
  const title = svg("title");
  title.textContent = label;
  node.append(title, svg("path", { d: linePath(times, values, end, span, width, height, niceTop(values)) }));
  return node;
}

// A chart with its title, its last value and its scale (0 to the top of what it shows).
function lineChart(figure, heading, times, values, end, span, format) {
  const width = 320, height = 96;
  const box = document.createElement("figure");
  box.className = "chart";
  box.dataset.figure = figure;
  box.dataset.values = JSON.stringify(values);
  const caption = document.createElement("figcaption");
  const now = lastKnown(values);
  caption.append(heading, " ");
  const value = document.createElement("b");
  value.textContent = now === null ? "-" : format(now);
  caption.append(value);
  const top = niceTop(values);
  const node = svg("svg", { width: "100%", viewBox: `0 0 ${width} ${height + 14}`, preserveAspectRatio: "none", role: "img" });
  node.append(
    svg("rect", { class: "plot", x: 0, y: 0, width, height }),
    svg("line", { class: "grid", x1: 0, y1: height / 2, x2: width, y2: height / 2 }),
    svg("path", { class: "line", d: linePath(times, values, end, span, width, height, top) }),
  );
  const labels = [[2, 11, "start", format(top)], [2, height + 12, "start", "-" + (span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s")],
    [width - 2, height + 12, "end", "now"]];
  for (const [x, y, anchor, text] of labels) {
    const label = svg("text", { x, y, "text-anchor": anchor });
    label.textContent = text;
    node.append(label);
  }
  box.append(caption, node);
  return box;
}
