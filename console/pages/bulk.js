// Bulk: build a selection with the filter form, preview what would happen (counts by
// outcome and reason, by status, a sample), apply it as best-effort or atomic with an
// Idempotency-Key, then follow it: a progress bar moved by `bulk.progress` events,
// cancel, and the results as CSV.

import { get, post, call, canAct, newKey } from "../api.js";
import * as live from "../live.js";
import { h, fill, num, short, badge, table, row, toast, errorText, labelled, filterFields, time } from "../ui.js";

const RECENT = "orderflow.console.bulks";
const TERMINAL = ["completed", "rejected", "cancelled", "failed"];

function remember(id) {
  const list = JSON.parse(sessionStorage.getItem(RECENT) ?? "[]").filter((x) => x !== id);
  list.unshift(id);
  sessionStorage.setItem(RECENT, JSON.stringify(list.slice(0, 10)));
}

export async function render(main, { id }) {
  if (id) return follow(main, id);
  return builder(main);
}

async function builder(main) {
  const filter = filterFields("bulk");
  filter.set(JSON.parse(sessionStorage.getItem("orderflow.console.filter") ?? "{}"));
  let doc = { actions: [] };
  try {
    doc = await get("/orders/state-machine/documentation");
  } catch (e) {
    toast(`Could not read the state machine: ${errorText(e)}`, "error");
  }
  const action = h("select", { id: "bulk-action", name: "action", required: true }, doc.actions.map((a) => h("option", { value: a.action }, `${a.action} (${a.from.join(", ")} → ${a.to ?? "same"})`)));
  const reason = h("input", { id: "bulk-reason", name: "reason", maxlength: "500", placeholder: "written to every order's history", required: true });
  const tracking = h("input", { id: "bulk-tracking", name: "tracking_number", autocomplete: "off" });
  const trackingField = labelled("Tracking number (ship)", tracking);
  const modes = h(
    "fieldset",
    { class: "modes" },
    h("legend", {}, "Mode"),
    h("label", { class: "check" }, h("input", { type: "radio", name: "mode", value: "best_effort", checked: true }), " best effort: every order that may move moves"),
    h("label", { class: "check" }, h("input", { type: "radio", name: "mode", value: "atomic" }), " atomic: all or nothing"),
  );
  let key = newKey();
  const keyEl = h("code", { id: "bulk-key" }, key);
  const previewBtn = h("button", { type: "submit", class: "primary", id: "bulk-preview" }, "Preview");
  const applyBtn = canAct() ? h("button", { type: "button", id: "bulk-apply", disabled: true }, "Apply") : null;
  const out = h("section", { class: "card", id: "bulk-preview-result", "aria-live": "polite", hidden: true });
  const form = h(
    "form",
    { class: "card", id: "bulk-form", "aria-label": "Bulk change" },
    h("h2", {}, "Selection"),
    filter.el,
    h("h2", {}, "Change"),
    h("div", { class: "filter-grid" }, labelled("Action", action), labelled("Reason", reason), trackingField, modes),
    h("p", { class: "sub" }, "Idempotency-Key: ", keyEl, " (a repeated apply returns the same bulk)"),
    h("div", { class: "actions" }, previewBtn, applyBtn, canAct() ? null : h("span", { class: "notice" }, "Support previews; only an admin applies.")),
  );
  const recent = h("section", { class: "card" }, h("h2", {}, "Recent bulks in this tab"));
  const ids = JSON.parse(sessionStorage.getItem(RECENT) ?? "[]");
  recent.append(ids.length ? h("ul", {}, ids.map((b) => h("li", {}, h("a", { href: `#/bulk/${b}`, class: "mono" }, b)))) : h("p", { class: "empty" }, "None yet."));
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Bulk change")), form, out, recent);

  const showTracking = () => (trackingField.hidden = action.value !== "ship");
  showTracking();
  action.addEventListener("change", showTracking);
  // Any change to the request makes it a different bulk: a new key.
  form.addEventListener("input", (e) => {
    if (e.target === reason && applyBtn) return;
    key = newKey();
    keyEl.textContent = key;
    if (applyBtn) applyBtn.disabled = true;
  });

  function request() {
    const f = filter.read();
    const body = { selection: { filter: f }, action: action.value };
    if (reason.value.trim()) body.reason = reason.value.trim();
    if (action.value === "ship" && tracking.value.trim()) body.tracking_number = tracking.value.trim();
    return body;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let body;
    try {
      body = request();
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    previewBtn.disabled = true;
    try {
      const p = (await post("/orders/bulk/preview", body)).body;
      const rejects = Object.entries(p.would_reject);
      fill(
        out,
        h("h2", {}, "Preview"),
        h(
          "div",
          { class: "tiles" },
          h("div", { class: "stat" }, h("div", { class: "stat-label" }, "Matched"), h("div", { class: "stat-value", id: "preview-matched" }, num(p.matched))),
          h("div", { class: "stat" }, h("div", { class: "stat-label" }, "Would apply"), h("div", { class: "stat-value", id: "preview-apply" }, num(p.would_apply))),
          h("div", { class: "stat" }, h("div", { class: "stat-label" }, "Would reject"), h("div", { class: "stat-value" }, num(rejects.reduce((a, [, n]) => a + n, 0)))),
        ),
        h("div", { class: "cols" }, h("div", {}, h("h3", {}, "Rejections by reason"), table(["Reason", "Orders"], rejects.map(([c, n]) => row(["Reason", "Orders"], [h("code", {}, c), num(n)])), { empty: "None." })), h("div", {}, h("h3", {}, "Selected by status"), table(["Status", "Orders"], Object.entries(p.by_status).map(([s, n]) => row(["Status", "Orders"], [badge(s), num(n)])), { empty: "None." }))),
        h("h3", {}, "Sample"),
        table(
          ["Order", "Outcome", "Code / change"],
          p.sample.map((x) => row(["Order", "Outcome", "Code / change"], [h("a", { href: `#/orders/${x.order_id}`, class: "mono" }, short(x.order_id)), badge(x.outcome), x.code ? h("code", {}, x.code) : `${x.from} → ${x.to}`])),
          { empty: "Nothing selected." },
        ),
      );
      out.hidden = false;
      if (applyBtn) applyBtn.disabled = p.would_apply === 0 && body.action !== undefined && p.matched === 0;
    } catch (err) {
      toast(`Preview failed: ${errorText(err)}`, "error");
    } finally {
      previewBtn.disabled = false;
    }
  });

  applyBtn?.addEventListener("click", async () => {
    let body;
    try {
      body = request();
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    if (!body.reason) {
      toast("A bulk change needs a reason: it is written to every order's history.", "error");
      reason.focus();
      return;
    }
    body.mode = form.querySelector("input[name=mode]:checked").value;
    applyBtn.disabled = true;
    try {
      const r = await call("POST", "/orders/bulk/status-update", { body, headers: { "Idempotency-Key": key } });
      remember(r.body.bulk_id);
      location.hash = `#/bulk/${r.body.bulk_id}`;
    } catch (err) {
      applyBtn.disabled = false;
      toast(`Apply refused: ${errorText(err)}`, "error");
    }
  });
}

async function follow(main, id) {
  remember(id);
  const bar = h("progress", { id: "bulk-progress", max: "100", value: "0", "aria-label": "Bulk progress" });
  const pct = h("span", { id: "bulk-pct", class: "pct" }, "0 %");
  const counts = h("dl", { class: "kv", id: "bulk-counts" });
  const statusEl = h("span", { id: "bulk-status" });
  const cancelBtn = canAct() ? h("button", { type: "button", class: "danger", id: "bulk-cancel" }, "Cancel") : null;
  const csvBtn = h("button", { type: "button", id: "bulk-csv" }, "Download CSV");
  const csvNote = h("span", { id: "bulk-csv-note", class: "sub", "aria-live": "polite" });
  const meta = h("p", { class: "sub" });
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Bulk ", h("span", { class: "mono", title: id }, short(id))), h("p", { class: "sub" }, statusEl)),
    h("section", { class: "card" }, h("h2", {}, "Progress"), h("div", { class: "progress-row" }, bar, pct), counts, meta, h("div", { class: "actions" }, cancelBtn, csvBtn, csvNote)),
    h("p", {}, h("a", { href: "#/bulk" }, "New bulk")),
  );

  let view = null;
  function draw(v) {
    // Events can arrive out of order with the poll: never move backwards.
    const done = (x) => x.applied + x.rejected + x.failed + x.skipped;
    if (view && !TERMINAL.includes(v.status) && done(v) < done(view)) return;
    view = v;
    const d = done(v);
    const p = v.total ? Math.floor((100 * d) / v.total) : TERMINAL.includes(v.status) ? 100 : 0;
    bar.value = p;
    pct.textContent = `${p} %`;
    // Skipped items (a cancel, an atomic abort) count as done but were never applied.
    const worked = v.applied + v.rejected + v.failed;
    bar.title = v.skipped ? `${num(worked)} processed, ${num(v.skipped)} skipped` : `${num(worked)} processed`;
    fill(statusEl, badge(v.status), ` ${v.mode ?? ""} · ${v.action ?? ""}`, v.cancel_requested && !TERMINAL.includes(v.status) ? " · cancel requested" : "");
    fill(
      counts,
      ["total", "applied", "rejected", "failed", "skipped", "pending"].flatMap((k) => [h("dt", {}, k), h("dd", { id: `bulk-${k}` }, num(k === "pending" ? Math.max(0, v.total - d) : v[k]))]),
    );
    fill(
      meta,
      v.request?.reason ? [`“${v.request.reason}” · `] : null,
      `created ${time(v.created_at)}`,
      v.started_at ? ` · started ${time(v.started_at)}` : "",
      v.finished_at ? ` · finished ${time(v.finished_at)}` : "",
      v.skipped && v.status === "cancelled" ? ` · stopped after ${num(v.applied + v.rejected + v.failed)} of ${num(v.total)}` : "",
    );
    if (cancelBtn) cancelBtn.disabled = TERMINAL.includes(v.status) || v.cancel_requested;
  }

  async function poll() {
    try {
      draw(await get(`/orders/bulk/${id}`));
    } catch (e) {
      fill(statusEl, `Could not read the bulk: ${errorText(e)}`);
    }
  }

  cancelBtn?.addEventListener("click", async () => {
    cancelBtn.disabled = true;
    try {
      const r = await post(`/orders/bulk/${id}/cancel`, {});
      draw(r.body);
      toast("Cancel requested: the bulk stops after the chunk in hand", "ok");
    } catch (e) {
      toast(`Cancel refused: ${errorText(e)}`, "error");
      cancelBtn.disabled = false;
    }
  });

  csvBtn.addEventListener("click", async () => {
    csvBtn.disabled = true;
    try {
      const resp = await call("GET", `/orders/bulk/${id}/results?format=csv`, { raw: true, headers: { Accept: "text/csv" } });
      const text = await resp.text();
      const rows = Math.max(0, text.split("\n").filter((l) => l.length).length - 1);
      const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      const a = h("a", { href: url, download: `bulk-${id}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      fill(csvNote, `bulk-${short(id)}.csv: `, h("span", { id: "bulk-csv-rows" }, String(rows)), " rows");
    } catch (e) {
      toast(`Download failed: ${errorText(e)}`, "error");
    } finally {
      csvBtn.disabled = false;
    }
  });

  const unlisten = live.on((type, d) => {
    if (type === "bulk.progress" && d.bulk_id === id) draw(d);
  });
  await poll();
  // Progress events come once per chunk; a slow poll fills in what they do not say
  // (queued → running, the final timestamps).
  const timer = setInterval(() => {
    if (!view || !TERMINAL.includes(view.status)) poll();
  }, 2000);
  return () => {
    unlisten();
    clearInterval(timer);
  };
}
