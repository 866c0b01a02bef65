// The state machine, from GET /orders/state-machine/documentation: the transition table
// and a diagram drawn here as SVG from the same JSON (no Mermaid, no network). The
// Mermaid text the API also serves is offered for copying into other tools.

import { get } from "../api.js";
import { h, fill, badge, table, row, errorText } from "../ui.js";

const NS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// The happy path left to right, the exits below it; unknown statuses go last.
const PLACE = {
  pending: [80, 100],
  confirmed: [310, 100],
  processing: [540, 100],
  shipped: [770, 100],
  delivered: [1000, 100],
  cancelled: [310, 300],
  refunded: [770, 300],
};
const W = 1080;
const H = 360;
const NODE_W = 136;
const NODE_H = 40;

function diagram(doc) {
  const pos = { ...PLACE };
  let extra = 0;
  for (const st of doc.statuses) if (!pos[st]) pos[st] = [80 + 230 * extra++, 340];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "machine", role: "img", "aria-labelledby": "machine-title" });
  svg.append(s("title", { id: "machine-title" }, "Order state machine: statuses and the actions between them"));
  const defs = s("defs");
  const marker = s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.append(s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);

  // Where a line from the centre of a node towards (tx, ty) leaves the node's box.
  const exit = ([x, y], [tx, ty]) => {
    const dx = tx - x;
    const dy = ty - y;
    const k = Math.min(Math.abs(NODE_W / 2 / (dx || 1e-9)), Math.abs(NODE_H / 2 / (dy || 1e-9)));
    return [x + dx * k, y + dy * k];
  };
  const loops = {};
  for (const a of doc.actions) {
    for (const from of a.from) {
      const p = pos[from];
      if (!a.to || a.to === from) {
        // Context-only action (e.g. mark_paid): a loop above the node.
        const n = (loops[from] = (loops[from] ?? 0) + 1);
        const [x, y] = p;
        const top = y - NODE_H / 2;
        const lift = 26 + 14 * (n - 1);
        svg.append(s("path", { d: `M${x - 18},${top} C${x - 34},${top - lift} ${x + 34},${top - lift} ${x + 18},${top}`, class: "edge", "marker-end": "url(#arrow)" }));
        svg.append(s("text", { x, y: top - lift + 2, class: "edge-label", "text-anchor": "middle" }, a.action));
        continue;
      }
      const q = pos[a.to];
      const [x1, y1] = exit(p, q);
      const [x2, y2] = exit(q, p);
      // A slight bend keeps two edges into one node apart and the labels readable.
      const mx = (x1 + x2) / 2 + (y2 - y1) * 0.08;
      const my = (y1 + y2) / 2 - (x2 - x1) * 0.08;
      svg.append(s("path", { d: `M${x1},${y1} Q${mx},${my} ${x2},${y2}`, class: "edge", "marker-end": "url(#arrow)" }));
      // Labels of level edges sit above the line, clear of the boxes' borders.
      const level = Math.abs(y2 - y1) < 1;
      const label = s("text", { x: mx, y: level ? my - 10 : my - 4, class: "edge-label", "text-anchor": "middle" }, a.action);
      const title = s("title", {}, `${a.action}: ${from} → ${a.to}; roles ${a.roles.join(", ")}${a.guards.length ? `; guards ${a.guards.join(", ")}` : ""}`);
      label.append(title);
      svg.append(label);
    }
  }
  for (const st of doc.statuses) {
    const [x, y] = pos[st];
    const g = s("g", { class: `node n-${st}` });
    g.append(s("rect", { x: x - NODE_W / 2, y: y - NODE_H / 2, width: NODE_W, height: NODE_H, rx: 10 }));
    g.append(s("text", { x, y: y + 5, "text-anchor": "middle" }, st));
    svg.append(g);
  }
  return svg;
}

export async function render(main) {
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "State machine")), h("p", { class: "empty" }, "Loading…"));
  let doc, mermaid;
  try {
    [doc, mermaid] = await Promise.all([get("/orders/state-machine/documentation"), fetch("/orders/state-machine/documentation?format=mermaid").then((r) => r.text())]);
  } catch (e) {
    fill(main, h("p", { class: "form-error", role: "alert" }, `Could not read the state machine: ${errorText(e)}`));
    return;
  }
  const head = ["Action", "From", "To", "Roles", "Guards", "Effects"];
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "State machine"), h("p", { class: "sub" }, "One table drives validation, valid-actions, this page and the tests.")),
    h("section", { class: "card" }, h("h2", {}, "Diagram"), h("div", { class: "machine-box", id: "machine-diagram" }, diagram(doc))),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Transitions"),
      table(
        head,
        doc.actions.map((a) =>
          row(head, [
            h("code", {}, a.action),
            a.from.map((f) => [badge(f), " "]),
            a.to ? badge(a.to) : h("em", {}, "unchanged"),
            [a.roles.join(", "), a.customer_only_from ? h("small", {}, ` (customer only from ${a.customer_only_from.join(", ")})`) : null],
            a.guards.length ? a.guards.join(", ") : "—",
            a.effects.length ? a.effects.join(", ") : "—",
          ]),
        ),
      ),
    ),
    h("section", { class: "card" }, h("h2", {}, "Rejection codes"), h("p", {}, doc.rejection_codes.map((c) => [h("code", {}, c), " "]))),
    h("details", { class: "card" }, h("summary", {}, "Mermaid source (", h("code", {}, "?format=mermaid"), ")"), h("pre", { class: "json" }, mermaid)),
  );
}
