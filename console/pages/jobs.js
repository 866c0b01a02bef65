// Jobs and dead letters: jobs by status (newest first) with their error and attempts;
// for dead jobs an admin can retry one, retry every dead job matching the filter, or
// discard one (it ends cancelled, keeping why it died).

import { get, post, canAct } from "../api.js";
import { h, fill, time, short, badge, table, row, toast, errorText, labelled, num } from "../ui.js";

const STATUSES = ["", "queued", "running", "retrying", "dead", "succeeded", "rejected", "cancelled"];
const HEAD = ["Job", "Kind", "Status", "Attempts", "Error", "Order / bulk", "Updated", ""];
const REFRESH_MS = 3000;

export function render(main, _params, query) {
  const statusSel = h("select", { id: "jobs-status", name: "status" }, STATUSES.map((s) => h("option", { value: s }, s || "any")));
  statusSel.value = query.get("status") ?? "dead";
  const kindSel = h("select", { id: "jobs-kind", name: "kind" }, ["", "change_status", "bulk"].map((k) => h("option", { value: k }, k || "any")));
  const code = h("input", { id: "jobs-code", name: "error_code", placeholder: "e.g. unparseable", autocomplete: "off" });
  const jobId = query.get("id");
  const retryAll = h("button", { type: "button", id: "retry-all", hidden: true }, "Retry all matching");
  const form = h(
    "form",
    { class: "card inline-form wrap", "aria-label": "Filter jobs" },
    labelled("Status", statusSel),
    labelled("Kind", kindSel),
    labelled("Error code", code),
    h("button", { type: "submit", class: "primary" }, "Show"),
    retryAll,
  );
  const status = h("p", { class: "sub", id: "jobs-status-line", "aria-live": "polite" });
  const list = h("div", { id: "jobs-list" });
  const more = h("button", { type: "button", hidden: true }, "More");
  const single = h("div", { id: "job-single" });
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Jobs and dead letters")), single, form, h("section", { class: "card" }, status, list, more));

  let cursor = null;
  let shown = 0;

  function params(withCursor) {
    const p = new URLSearchParams({ limit: "50" });
    if (statusSel.value) p.set("status", statusSel.value);
    if (kindSel.value) p.set("kind", kindSel.value);
    if (code.value.trim()) p.set("error_code", code.value.trim());
    if (withCursor && cursor) p.set("cursor", cursor);
    return p;
  }

  function jobRow(j) {
    const err = j.error ? h("span", { class: "err" }, h("code", {}, j.error.code ?? "error"), " ", j.error.message ?? "") : "—";
    const target = j.order_id ? h("a", { href: `#/orders/${j.order_id}`, class: "mono" }, short(j.order_id)) : j.bulk_id ? h("a", { href: `#/bulk/${j.bulk_id}`, class: "mono" }, `bulk ${short(j.bulk_id)}`) : "—";
    const buttons =
      canAct() && j.status === "dead"
        ? h(
            "div",
            { class: "row-actions" },
            h("button", { type: "button", class: "primary", "data-retry": j.id, "aria-label": `Retry job ${short(j.id)}`, onclick: () => retry(j.id) }, "Retry"),
            h("button", { type: "button", class: "danger", "data-discard": j.id, "aria-label": `Discard job ${short(j.id)}`, onclick: (e) => discard(j.id, e.currentTarget) }, "Discard"),
          )
        : "";
    return row(HEAD, [h("span", { class: "mono", title: j.id }, short(j.id)), j.kind, badge(j.status), j.attempts, err, target, time(j.updated_at), buttons], { "data-job-id": j.id });
  }

  let lastSeen = "";
  async function load(append = false, background = false) {
    retryAll.hidden = !(canAct() && statusSel.value === "dead");
    try {
      const r = await get(`/admin/jobs?${params(append)}`);
      // A background refresh leaves the table alone unless something changed (or an
      // armed discard button is waiting for its second click).
      const seen = JSON.stringify(r.jobs);
      if (background && (seen === lastSeen || list.querySelector("[data-armed='1']"))) return;
      if (!append) lastSeen = seen;
      const rows = r.jobs.map(jobRow);
      if (append) {
        list.querySelector("tbody")?.append(...rows);
        shown += rows.length;
      } else {
        fill(list, table(HEAD, rows, { empty: statusSel.value === "dead" ? "No dead jobs. All clear." : "No jobs match." }));
        shown = rows.length;
      }
      cursor = r.next_cursor;
      more.hidden = !cursor;
      fill(status, `${num(shown)} ${statusSel.value || ""} jobs shown, newest first${cursor ? " (more below)" : ""}`);
    } catch (e) {
      fill(status, `Could not list jobs: ${errorText(e)}`);
    }
  }

  async function showSingle() {
    if (!jobId) return;
    try {
      const j = await get(`/jobs/${jobId}`);
      fill(single, h("section", { class: "card" }, h("h2", {}, "Job ", h("span", { class: "mono" }, short(j.id))), table(HEAD, [jobRow(j)]), j.result ? h("pre", { class: "json" }, JSON.stringify(j.result, null, 2)) : null));
    } catch (e) {
      fill(single, h("p", { class: "form-error" }, `Job ${short(jobId)}: ${errorText(e)}`));
    }
  }

  async function retry(id) {
    try {
      await post(`/admin/jobs/${id}/retry`, {});
      toast(`Job ${short(id)} queued again`, "ok");
    } catch (e) {
      toast(`Retry refused: ${errorText(e)}`, "error");
    }
    load();
    showSingle();
  }

  async function discard(id, button) {
    // Two steps: discarding gives the job up for good.
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Really discard?";
      setTimeout(() => {
        if (button.isConnected) {
          button.dataset.armed = "";
          button.textContent = "Discard";
        }
      }, 4000);
      return;
    }
    try {
      await post(`/admin/jobs/${id}/discard`, {});
      toast(`Job ${short(id)} discarded`, "ok");
    } catch (e) {
      toast(`Discard refused: ${errorText(e)}`, "error");
    }
    load();
  }

  retryAll.addEventListener("click", async () => {
    const body = {};
    if (kindSel.value) body.kind = kindSel.value;
    if (code.value.trim()) body.error_code = code.value.trim();
    try {
      const r = await post("/admin/jobs/dead/retry", body);
      toast(`${r.body.requeued} dead jobs queued again${r.body.more ? "; more remain, click again" : ""}`, "ok");
    } catch (e) {
      toast(`Retry refused: ${errorText(e)}`, "error");
    }
    load();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  statusSel.addEventListener("change", () => load());
  kindSel.addEventListener("change", () => load());
  more.addEventListener("click", () => load(true));

  showSingle();
  load();
  // Jobs have no events of their own: refresh the first page while nothing is paged in.
  const timer = setInterval(() => {
    if (!cursor || shown <= 50) load(false, true);
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
