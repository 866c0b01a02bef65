// Small DOM helpers shared by the pages: an element builder, formatters, toasts and the
// filter form that both the orders search and the bulk builder use.

/**
 * Build an element: h("a", {href: "#/", class: "x", onclick: fn}, "text", child...).
 * Attribute values of null/undefined/false are skipped; `true` sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag === "svg" || attrs?.svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (k === "svg" || v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function money(cents, currency = "EUR") {
  if (cents === null || cents === undefined) return "—";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency}`;
  }
}

export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// The last 8 hex digits: ids are UUIDv7, whose leading digits are a timestamp shared by
// everything created in the same moment.
export const short = (id) => (id ? String(id).slice(-8) : "—");

export function num(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString();
}

/** A status/payment/outcome pill. */
export function badge(text, kind = text) {
  return h("span", { class: `badge b-${String(kind).replace(/[^a-z_]/gi, "")}` }, text ?? "—");
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const t = h("div", { class: `toast t-${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
}

/** Show an API error where the operator looks, in words. */
export function errorText(e) {
  if (e?.code && e?.message) return `${e.message} (${e.code})`;
  return String(e?.message ?? e);
}

export function labelled(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", {}, hint) : null);
}

export const STATUSES = ["pending", "confirmed", "processing", "shipped", "delivered", "cancelled", "refunded"];
export const PAYMENT = ["unpaid", "paid", "refunded"];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const isUuid = (s) => UUID.test(String(s).trim());

/**
 * The order filter (API.md "Bulk" selection filter) as a form fieldset. `read()` returns
 * the filter object (only the fields set) or throws with a message; `set(filter)` fills it.
 */
export function filterFields(prefix) {
  const customer = h("input", { id: `${prefix}-customer`, name: "customer_id", placeholder: "uuid", autocomplete: "off", spellcheck: "false" });
  const statusBoxes = STATUSES.map((s) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "status", value: s }), " ", s),
  );
  const payment = h("select", { id: `${prefix}-payment`, name: "payment_status" }, h("option", { value: "" }, "any"), PAYMENT.map((p) => h("option", { value: p }, p)));
  const from = h("input", { id: `${prefix}-from`, type: "datetime-local", name: "created_from" });
  const to = h("input", { id: `${prefix}-to`, type: "datetime-local", name: "created_to" });
  const min = h("input", { id: `${prefix}-min`, type: "number", step: "0.01", min: "0", name: "min_total", inputmode: "decimal" });
  const max = h("input", { id: `${prefix}-max`, type: "number", step: "0.01", min: "0", name: "max_total", inputmode: "decimal" });
  const el = h(
    "div",
    { class: "filter-grid" },
    labelled("Customer id", customer),
    h("fieldset", { class: "statuses" }, h("legend", {}, "Status"), statusBoxes),
    labelled("Payment", payment),
    labelled("Created from", from),
    labelled("Created to", to),
    labelled("Total at least", min),
    labelled("Total at most", max),
  );
  function read() {
    const f = {};
    const c = customer.value.trim();
    if (c) {
      if (!isUuid(c)) throw new Error("the customer id is not a uuid");
      f.customer_id = c;
    }
    const st = statusBoxes.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (st.length) f.status = st;
    if (payment.value) f.payment_status = payment.value;
    if (from.value) f.created_from = new Date(from.value).toISOString();
    if (to.value) f.created_to = new Date(to.value).toISOString();
    if (min.value !== "") f.min_total_cents = Math.round(Number(min.value) * 100);
    if (max.value !== "") f.max_total_cents = Math.round(Number(max.value) * 100);
    return f;
  }
  const local = (iso) => {
    const d = new Date(iso);
    const off = d.getTimezoneOffset() * 60000;
    return new Date(d.getTime() - off).toISOString().slice(0, 16);
  };
  function set(f = {}) {
    customer.value = f.customer_id ?? "";
    for (const l of statusBoxes) {
      const i = l.querySelector("input");
      i.checked = (f.status ?? []).includes(i.value);
    }
    payment.value = f.payment_status ?? "";
    from.value = f.created_from ? local(f.created_from) : "";
    to.value = f.created_to ? local(f.created_to) : "";
    min.value = f.min_total_cents !== undefined ? f.min_total_cents / 100 : "";
    max.value = f.max_total_cents !== undefined ? f.max_total_cents / 100 : "";
  }
  return { el, read, set };
}

/** Does an order (or an event's fields) match a filter, as far as the fields tell? */
export function matchesFilter(f, o) {
  if (f.customer_id && o.customer_id !== f.customer_id) return false;
  if (f.status && !f.status.includes(o.status)) return false;
  if (f.payment_status && o.payment_status !== f.payment_status) return false;
  if (f.created_from && o.created_at && o.created_at < f.created_from) return false;
  if (f.created_to && o.created_at && o.created_at > f.created_to) return false;
  if (f.min_total_cents !== undefined && o.total_cents < f.min_total_cents) return false;
  if (f.max_total_cents !== undefined && o.total_cents > f.max_total_cents) return false;
  return true;
}

/** Call `fn` at most once per `ms`, trailing. */
export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** A horizontal-scroll-safe table: on narrow screens rows become cards (see app.css). */
export function table(headers, rows, { caption, empty = "Nothing here." } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data" },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h(
        "tbody",
        {},
        rows.map((r) => {
          const tr = r instanceof Node ? r : h("tr", {}, r.map((c, i) => h("td", { "data-label": headers[i] }, c)));
          return tr;
        }),
      ),
    ),
  );
}

/** A row for table(): cells labelled with their column (for the phone layout). */
export function row(headers, cells, attrs = {}) {
  return h("tr", attrs, cells.map((c, i) => h("td", { "data-label": headers[i] }, c)));
}
