// Orders: jump to an id, or search by customer, status, payment, created range and total
// (POST /orders/bulk/filter, oldest first, with the total count). With no filter the page
// shows the latest orders (GET /orders, newest first). Both lists follow the event
// stream: new orders appear and statuses change in place.

import { get, post } from "../api.js";
import * as live from "../live.js";
import { h, fill, money, time, short, badge, num, filterFields, matchesFilter, isUuid, table, row, errorText, debounce, labelled } from "../ui.js";

const HEAD = ["Order", "Status", "Payment", "Total", "Customer", "Created"];
const PAGE = 50;

function orderRow(o, fresh = false) {
  return row(
    HEAD,
    [
      h("a", { href: `#/orders/${o.id}`, class: "mono" }, short(o.id)),
      h("span", { class: "st" }, badge(o.status)),
      h("span", { class: "pay" }, badge(o.payment_status)),
      money(o.total_cents, o.currency),
      h("span", { class: "mono", title: o.customer_id }, short(o.customer_id)),
      time(o.created_at),
    ],
    { "data-order-id": o.id, class: fresh ? "fresh" : null },
  );
}

export function render(main, _params, query) {
  const idInput = h("input", { id: "order-id", name: "order_id", placeholder: "order uuid", autocomplete: "off", spellcheck: "false" });
  const jump = h(
    "form",
    { class: "inline-form", "aria-label": "Open an order by id" },
    labelled("Order id", idInput),
    h("button", { type: "submit" }, "Open"),
  );
  jump.addEventListener("submit", (e) => {
    e.preventDefault();
    const id = idInput.value.trim();
    if (isUuid(id)) location.hash = `#/orders/${id}`;
    else fill(status, "That is not an order id (a uuid).");
  });

  const filter = filterFields("orders");
  const form = h(
    "form",
    { class: "card", id: "order-search", "aria-label": "Search orders" },
    h("h2", {}, "Search"),
    filter.el,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Search"),
      h("button", { type: "reset" }, "Clear"),
      h("a", { href: "#/bulk", class: "button", id: "to-bulk" }, "Bulk change these…"),
    ),
  );
  const status = h("p", { class: "sub", id: "orders-status", "aria-live": "polite" });
  const list = h("div", { id: "orders-list" });
  const more = h("button", { type: "button", hidden: true }, "More");
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Orders"), jump), form, h("section", { class: "card" }, status, list, more));

  let current = null; // {filter, cursor, rows: Map(id -> tr), tbody}
  const pending = new Set();

  async function search(append = false) {
    let f;
    try {
      f = filter.read();
    } catch (e) {
      fill(status, e.message);
      return;
    }
    sessionStorage.setItem("orderflow.console.filter", JSON.stringify(f));
    const latest = Object.keys(f).length === 0;
    try {
      let orders, total, next;
      if (latest) {
        const cursor = append ? `&cursor=${current.cursor}` : "";
        const r = await get(`/orders?limit=${PAGE}${cursor}`);
        orders = r.orders;
        next = r.next_cursor;
      } else {
        const r = await post("/orders/bulk/filter", { selection: { filter: f }, limit: PAGE, cursor: append ? current.cursor : undefined });
        orders = r.body.orders;
        total = r.body.total;
        next = r.body.next_cursor;
      }
      if (!append) {
        const rows = orders.map((o) => orderRow(o));
        const t = table(HEAD, rows, { empty: "No order matches." });
        fill(list, t);
        current = { filter: f, latest, cursor: next, total, tbody: t.querySelector("tbody"), shown: orders.length };
      } else {
        for (const o of orders) current.tbody?.append(orderRow(o));
        current.cursor = next;
        current.shown += orders.length;
      }
      more.hidden = !next;
      fill(status, latest ? `Latest orders, newest first (${num(current.shown)} shown)` : `${num(total)} orders match, oldest first (${num(current.shown)} shown)`);
    } catch (e) {
      fill(status, `Search failed: ${errorText(e)}`);
    }
  }

  // New orders: fetch each (a few at a time) and put it on top when it matches.
  const addNew = debounce(async () => {
    const ids = [...pending];
    pending.clear();
    if (!current) return;
    if (ids.length > 20) {
      search();
      return;
    }
    for (const id of ids) {
      if (list.querySelector(`[data-order-id="${id}"]`)) continue;
      try {
        const o = await get(`/orders/${id}`);
        if (!matchesFilter(current.filter, o)) continue;
        if (!current.tbody) {
          const t = table(HEAD, [orderRow(o, true)]);
          fill(list, t);
          current.tbody = t.querySelector("tbody");
        } else if (current.latest) current.tbody.prepend(orderRow(o, true));
        else current.tbody.append(orderRow(o, true));
        current.shown += 1;
        if (current.total !== undefined) current.total += 1;
        fill(status, current.latest ? `Latest orders, newest first (${num(current.shown)} shown)` : `${num(current.total)} orders match, oldest first (${num(current.shown)} shown)`);
      } catch {
        // Gone or not visible: nothing to show.
      }
    }
  }, 250);

  const unlisten = live.on((type, d) => {
    if (type === "order.created") {
      pending.add(d.order_id);
      addNew();
    } else if (type === "order.status_changed") {
      const tr = list.querySelector(`[data-order-id="${d.order_id}"]`);
      if (!tr) return;
      fill(tr.querySelector(".st"), badge(d.to));
      if (d.payment_status) fill(tr.querySelector(".pay"), badge(d.payment_status));
      tr.classList.add("changed");
    }
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    search();
  });
  form.addEventListener("reset", () => setTimeout(() => search(), 0));
  more.addEventListener("click", () => search(true));
  form.querySelector("#to-bulk").addEventListener("click", () => {
    try {
      sessionStorage.setItem("orderflow.console.filter", JSON.stringify(filter.read()));
    } catch {
      // An invalid form carries nothing over.
    }
  });

  const saved = query.get("customer") ? { customer_id: query.get("customer") } : JSON.parse(sessionStorage.getItem("orderflow.console.filter") ?? "{}");
  filter.set(saved);
  search();
  return unlisten;
}
