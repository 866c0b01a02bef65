// One order: its figures and items, the actions this operator may take now (from
// valid-actions, with what blocks the others), and the history timeline. Everything is
// re-read when the event stream reports a change of this order, so the page follows
// changes made anywhere without reloading.

import { get, call, canAct, newKey } from "../api.js";
import * as live from "../live.js";
import { h, fill, money, time, short, badge, table, row, toast, errorText, labelled, debounce } from "../ui.js";

const BLOCKED = {
  invalid_transition: "not from this status",
  forbidden_role: "your role may not",
  not_owner: "not the owner",
  payment_required: "payment required",
  out_of_stock: "out of stock",
  missing_field: "needs more input",
  version_conflict: "the order changed",
};

export async function render(main, { id }) {
  const head = h("div", { class: "page-head" });
  const facts = h("section", { class: "card", id: "order-facts", "aria-label": "Order" });
  const actions = h("section", { class: "card", id: "order-actions", "aria-labelledby": "actions-title" });
  const items = h("section", { class: "card", id: "order-items", "aria-label": "Items" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  fill(
    main,
    head,
    h("div", { class: "cols" }, facts, actions),
    items,
    h("section", { class: "card", "aria-labelledby": "history-title" }, h("h2", { id: "history-title" }, "History"), timeline),
  );

  const reason = h("input", { id: "action-reason", name: "reason", maxlength: "500", placeholder: "optional" });
  const tracking = h("input", { id: "action-tracking", name: "tracking_number", placeholder: "needed to ship", autocomplete: "off" });
  let order = null;
  let busy = false;

  async function act(action) {
    if (busy) return;
    busy = true;
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    const body = { action, expected_version: order.version };
    if (reason.value.trim()) body.reason = reason.value.trim();
    if (action === "ship" && tracking.value.trim()) body.tracking_number = tracking.value.trim();
    try {
      // Wait briefly for the outcome; the live stream updates the page either way.
      const r = await call("POST", `/orders/${id}/change-status`, { body, headers: { "Idempotency-Key": newKey(), Prefer: "wait=10" } });
      if (r.status === 200) toast(`${action}: done`, "ok");
      else toast(`${action}: queued as job ${short(r.body.job_id)}`);
      reason.value = "";
    } catch (e) {
      toast(`${action} refused: ${errorText(e)}`, "error");
    } finally {
      busy = false;
      await refresh();
    }
  }

  let drawn = "";
  async function refresh() {
    let va, hist;
    try {
      [order, va, hist] = await Promise.all([get(`/orders/${id}`), get(`/orders/${id}/valid-actions`), get(`/orders/${id}/history`)]);
      // Unchanged: leave the page alone (keeps focus and half-typed input where they are).
      const seen = JSON.stringify([order, va, hist]);
      if (seen === drawn && !busy) {
        for (const b of actions.querySelectorAll("button[data-action]")) b.disabled = !va.actions.find((a) => a.action === b.dataset.action)?.allowed;
        return;
      }
      drawn = seen;
    } catch (e) {
      fill(head, h("h1", {}, "Order ", h("span", { class: "mono" }, short(id))));
      fill(facts, h("p", { class: "form-error", role: "alert" }, e.status === 404 ? "No such order." : `Could not load the order: ${errorText(e)}`));
      return;
    }
    fill(
      head,
      h("h1", {}, "Order ", h("span", { class: "mono", title: order.id }, short(order.id))),
      h("p", { class: "sub" }, h("span", { id: "order-status" }, badge(order.status)), " ", h("span", { id: "order-payment" }, badge(order.payment_status)), ` version ${order.version}`),
    );
    fill(
      facts,
      h("h2", {}, "Details"),
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "Id"),
        h("dd", { class: "mono wrap" }, order.id),
        h("dt", {}, "Customer"),
        h("dd", {}, h("a", { href: `#/orders?customer=${order.customer_id}`, class: "mono wrap" }, order.customer_id)),
        h("dt", {}, "Total"),
        h("dd", {}, money(order.total_cents, order.currency)),
        h("dt", {}, "Created"),
        h("dd", {}, time(order.created_at)),
        h("dt", {}, "Updated"),
        h("dd", {}, time(order.updated_at)),
      ),
    );
    const mayAct = canAct();
    fill(
      actions,
      h("h2", { id: "actions-title" }, mayAct ? "Actions" : "Actions (read-only)"),
      mayAct ? null : h("p", { class: "notice" }, "Signed in as support: you see what an admin could do, without buttons."),
      h(
        "ul",
        { class: "action-list" },
        va.actions.map((a) => {
          const why = a.blocked_by ? h("small", { class: "blocked" }, BLOCKED[a.blocked_by] ?? a.blocked_by, " (", h("code", {}, a.blocked_by), ")") : null;
          // An action that keeps the status (mark_paid) changes only the context.
          const target = a.to && a.to !== order.status ? ` → ${a.to}` : "";
          if (!mayAct) return h("li", { "data-action": a.action }, h("span", { class: a.allowed ? "allowed" : "not-allowed" }, a.action, target), " ", why);
          return h(
            "li",
            { "data-action": a.action },
            h(
              "button",
              {
                type: "button",
                class: a.allowed ? "primary" : "",
                disabled: !a.allowed,
                "data-action": a.action,
                "aria-describedby": why ? `why-${a.action}` : null,
                onclick: () => act(a.action),
              },
              a.action,
              target,
            ),
            why ? h("span", { id: `why-${a.action}` }, " ", why) : null,
          );
        }),
      ),
      mayAct ? h("div", { class: "action-inputs" }, labelled("Reason", reason), va.actions.some((a) => a.action === "ship") ? labelled("Tracking number", tracking) : null) : null,
    );
    fill(
      items,
      h("h2", {}, "Items"),
      table(
        ["Sku", "Quantity", "Unit price", "Line total"],
        order.items.map((i) => row(["Sku", "Quantity", "Unit price", "Line total"], [h("code", {}, i.sku), i.quantity, money(i.unit_price_cents, order.currency), money(i.quantity * i.unit_price_cents, order.currency)])),
      ),
    );
    fill(
      timeline,
      [...hist.history].reverse().map((e) =>
        h(
          "li",
          { "data-action": e.action },
          h("div", { class: "tl-head" }, h("strong", {}, e.action), " ", e.from && e.from !== e.to ? [badge(e.from), " → "] : null, badge(e.to)),
          h(
            "div",
            { class: "tl-meta" },
            h("time", { datetime: e.at }, time(e.at)),
            " · ",
            h("span", { class: `role r-${e.actor.role}` }, e.actor.role),
            " ",
            h("span", { class: "mono", title: e.actor.id }, short(e.actor.id)),
            e.job_id ? [" · job ", h("a", { href: `#/jobs?id=${e.job_id}`, class: "mono" }, short(e.job_id))] : null,
            e.bulk_id ? [" · bulk ", h("a", { href: `#/bulk/${e.bulk_id}`, class: "mono" }, short(e.bulk_id))] : null,
            ` · v${e.version}`,
          ),
          e.reason ? h("p", { class: "tl-reason" }, e.reason) : null,
        ),
      ),
    );
  }

  const later = debounce(refresh, 150);
  const unlisten = live.on((type, d) => {
    if (d.order_id === id) later();
  });
  await refresh();
  return unlisten;
}
