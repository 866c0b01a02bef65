// A small SVG time-series chart (no library): bars per bucket, a y-axis with round ticks,
// time labels, and a <title> per bar for hover and screen readers.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * points: [{at: Date, value: number}] oldest first. Returns an <svg> sized by CSS.
 * `unit` labels the y-axis (e.g. "changes/s").
 */
export function barChart(points, { unit = "", label = "chart", width = 720, height = 200 } = {}) {
  const pad = { l: 44, r: 8, t: 10, b: 24 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const max = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  svg.append(s("title", {}, label));
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + hgt - (hgt * i) / 4;
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y, y2: y, class: "grid" }));
    const v = (max * i) / 4;
    svg.append(s("text", { x: pad.l - 6, y: y + 4, class: "tick", "text-anchor": "end" }, v >= 10 ? Math.round(v) : +v.toFixed(2)));
  }
  if (unit) svg.append(s("text", { x: pad.l + 4, y: pad.t + 10, class: "unit" }, unit));
  const n = Math.max(points.length, 1);
  const bw = w / n;
  points.forEach((p, i) => {
    const bh = (hgt * p.value) / max;
    const x = pad.l + i * bw;
    const bar = s("rect", { x: x + 0.5, y: pad.t + hgt - bh, width: Math.max(bw - 1, 1), height: Math.max(bh, 0), class: "bar" });
    bar.append(s("title", {}, `${p.at.toLocaleTimeString()}: ${+p.value.toFixed(2)} ${unit}`));
    svg.append(bar);
  });
  // About one time label per 130 px, so they never overlap.
  const ticks = Math.max(1, Math.min(5, Math.floor(w / 130)));
  for (let i = 0; i <= ticks; i++) {
    const idx = Math.min(points.length - 1, Math.round(((points.length - 1) * i) / ticks));
    const p = points[idx];
    if (!p) continue;
    const x = pad.l + idx * bw + bw / 2;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    svg.append(s("text", { x, y: height - 6, class: "tick", "text-anchor": anchor }, p.at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: pad.t + hgt, y2: pad.t + hgt, class: "axis" }));
  return svg;
}
