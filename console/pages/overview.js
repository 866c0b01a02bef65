// The live overview: changes per second, jobs by state, queue depths, outbox lag, SSE
// connections, bulks in flight, audit-log retention, a 15-minute chart and the latest
// events. Polls GET /admin/overview (and /orders/events/stats for admins) every few
// seconds; the event stream makes the rate and the feed move in between.

import { get, canAct } from "../api.js";
import * as live from "../live.js";
import { barChart } from "../chart.js";
import { h, fill, num, short, badge, ago, errorText } from "../ui.js";

const POLL_MS = 3000;
const JOB_ORDER = ["queued", "running", "retrying", "succeeded", "rejected", "dead", "cancelled"];

function stat(label, value, hint, attrs = {}) {
  return h("div", { class: "stat", ...attrs }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value), hint ? h("div", { class: "stat-hint" }, hint) : null);
}

export function render(main) {
  const rateEl = h("span", { id: "rate" }, "0");
  const tiles = h("section", { class: "tiles", "aria-label": "Key figures" });
  const chartBox = h("div", { class: "chart-box", id: "chart" }, h("p", { class: "empty" }, "Loading…"));
  const jobsBox = h("div", { id: "jobs-by-state" });
  const queuesBox = h("div", { id: "queues" });
  const bulkBox = h("div", { id: "bulk-in-flight" });
  const feed = h("ol", { class: "feed", id: "feed", "aria-live": "off" });
  const errorBox = h("p", { class: "form-error", role: "alert" });
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("p", { class: "sub" }, "Live: ", rateEl, " changes/s now (this tab's event stream)")),
    errorBox,
    tiles,
    h("section", { class: "card" }, h("h2", {}, "Changes per second, last 15 minutes"), chartBox),
    h(
      "div",
      { class: "cols" },
      h("section", { class: "card" }, h("h2", {}, "Jobs by state"), jobsBox),
      h("section", { class: "card" }, h("h2", {}, "Queue depths"), queuesBox),
    ),
    h("div", { class: "cols" }, h("section", { class: "card" }, h("h2", {}, "Bulk in flight"), bulkBox), h("section", { class: "card" }, h("h2", {}, "Latest events"), feed)),
  );

  let last = null;
  let sse = null;
  async function poll() {
    try {
      const [o, s] = await Promise.all([get("/admin/overview"), canAct() ? get("/orders/events/stats").catch(() => null) : Promise.resolve(null)]);
      last = o;
      sse = s;
      fill(errorBox);
      draw();
    } catch (e) {
      fill(errorBox, `Could not load the overview: ${errorText(e)}`);
    }
  }

  function draw() {
    if (!last) return;
    const o = last;
    const lag = o.outbox.lag_secs;
    const unpublished = o.outbox.unsequenced + o.outbox.unconfirmed;
    const retention = o.history.retention_days;
    fill(
      tiles,
      stat("Changes/s", h("span", { id: "tile-rate" }, live.rate(10).toFixed(1)), "last 10 s, live"),
      stat("Dead jobs", h("a", { href: "#/jobs?status=dead", id: "tile-dead" }, num(o.jobs.dead)), "parked, need an operator", { class: o.jobs.dead > 0 ? "stat warn" : "stat" }),
      stat("In queue", num((o.jobs.queued ?? 0) + (o.jobs.retrying ?? 0) + (o.jobs.running ?? 0)), "queued, retrying or running"),
      stat("Outbox lag", lag < 1 ? "0 s" : `${lag.toFixed(1)} s`, `${num(unpublished)} unpublished · seq ${num(o.outbox.published_seq)}`, { class: lag > 10 ? "stat warn" : "stat" }),
      stat("SSE connections", sse ? num(sse.connections.total) : "—", sse ? Object.entries(sse.connections.by_role ?? {}).map(([r, n]) => `${r} ${n}`).join(" · ") || "none" : "admin only"),
      stat("Bulk in flight", h("span", { id: "tile-bulk" }, num(o.bulk.in_flight)), "queued or running"),
      stat("History kept", retention ? `${retention} days` : "forever", o.history.oldest_at ? `oldest ${ago(o.history.oldest_at)}` : "empty", { id: "tile-history" }),
    );
    const bucket = o.changes.bucket_secs;
    const points = o.changes.series.map(([at, n]) => ({ at: new Date(at), value: n / bucket }));
    // Drawn at the box's own width, so labels keep their size on any screen.
    const width = Math.max(280, Math.round(chartBox.clientWidth || 720));
    fill(chartBox, barChart(points, { width, height: width < 500 ? 180 : 220, unit: "changes/s", label: "Order changes per second over the last 15 minutes, 10-second buckets" }));
    fill(
      jobsBox,
      h(
        "dl",
        { class: "kv" },
        JOB_ORDER.filter((k) => k in o.jobs).map((k) => [k, o.jobs[k]]).flatMap(([k, v]) => [h("dt", {}, h("a", { href: `#/jobs?status=${k}` }, badge(k))), h("dd", {}, num(v))]),
      ),
    );
    fill(
      queuesBox,
      o.queues
        ? h(
            "dl",
            { class: "kv" },
            Object.entries(o.queues).flatMap(([k, v]) => [h("dt", {}, h("code", {}, k)), h("dd", {}, num(v))]),
          )
        : h("p", { class: "empty" }, "The broker is not answering."),
    );
    fill(
      bulkBox,
      o.bulk.operations.length
        ? h(
            "ul",
            { class: "bulk-list" },
            o.bulk.operations.map((b) => {
              const done = b.applied + b.rejected + b.failed + b.skipped;
              const pct = b.total ? Math.floor((100 * done) / b.total) : 0;
              return h(
                "li",
                {},
                h("a", { href: `#/bulk/${b.id}` }, `${b.action ?? "bulk"} · ${short(b.id)}`),
                " ",
                badge(b.status),
                h("progress", { max: "100", value: String(pct), "aria-label": `bulk ${short(b.id)} progress` }),
                h("small", {}, `${num(done)} / ${num(b.total)}`),
              );
            }),
          )
        : h("p", { class: "empty" }, "No bulk is running."),
    );
  }

  function onEvent(type, d) {
    const item = h(
      "li",
      {},
      h("time", {}, new Date(d.at ?? Date.now()).toLocaleTimeString()),
      " ",
      type === "bulk.progress"
        ? [h("a", { href: `#/bulk/${d.bulk_id}` }, `bulk ${short(d.bulk_id)}`), ` ${d.action ?? ""} ${num(d.applied + d.rejected + d.failed)}/${num(d.total)} `, badge(d.status)]
        : type === "reset"
          ? "stream reset: older events are past retention"
          : [
              h("a", { href: `#/orders/${d.order_id}`, class: "mono" }, short(d.order_id)),
              " ",
              d.action ?? type,
              " ",
              // A context-only change (mark_paid) shows the payment it set instead.
              d.from && d.from !== d.to ? [badge(d.from), " → ", badge(d.to)] : d.from ? ["payment → ", badge(d.payment_status)] : badge(d.to),
            ],
    );
    feed.prepend(item);
    while (feed.children.length > 12) feed.lastChild.remove();
  }

  for (const e of live.recent()) onEvent(e.type, e.data);
  const unlisten = live.on(onEvent);
  poll();
  const timer = setInterval(poll, POLL_MS);
  const rateTimer = setInterval(() => {
    const r = live.rate(10).toFixed(1);
    rateEl.textContent = r;
    const t = document.getElementById("tile-rate");
    if (t) t.textContent = r;
  }, 1000);
  return () => {
    unlisten();
    clearInterval(timer);
    clearInterval(rateTimer);
  };
}
