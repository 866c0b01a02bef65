// The console shell: sign-in gate, navigation, and a hash router that mounts one page at
// a time. Each page module exports `render(main, params)` and may return a cleanup
// function (timers, live listeners), called when the operator navigates away.

import { session, signOut, whenUnauthorized } from "./api.js";
import * as live from "./live.js";
import { h, fill, short } from "./ui.js";

const pages = {
  signin: () => import("./pages/signin.js"),
  overview: () => import("./pages/overview.js"),
  orders: () => import("./pages/orders.js"),
  order: () => import("./pages/order.js"),
  jobs: () => import("./pages/jobs.js"),
  bulk: () => import("./pages/bulk.js"),
  machine: () => import("./pages/machine.js"),
};

/** "#/orders/abc?x=1" → {page: "order", params: {id: "abc"}, query: URLSearchParams}. */
function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  const query = new URLSearchParams(qs);
  if (parts.length === 0) return { page: "overview", params: {}, query };
  if (parts[0] === "orders" && parts[1]) return { page: "order", params: { id: parts[1] }, query };
  if (parts[0] === "bulk" && parts[1]) return { page: "bulk", params: { id: parts[1] }, query };
  if (pages[parts[0]]) return { page: parts[0], params: {}, query };
  return { page: "missing", params: {}, query };
}

let cleanup = null;
let generation = 0;

async function show() {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const s = session();
  let r = route();
  if (!s || !["admin", "support"].includes(s.role)) {
    if (r.page !== "signin") {
      location.replace("#/signin");
      return;
    }
  } else if (r.page === "signin" && !r.query.has("switch")) {
    r = { page: "overview", params: {}, query: new URLSearchParams() };
  }
  renderWho();
  nav.hidden = !s || r.page === "signin";
  for (const a of nav.querySelectorAll("a")) {
    const target = a.getAttribute("href").slice(2).split("/")[0] || "overview";
    const here = r.page === target || (r.page === "order" && target === "orders");
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.querySelector(".menu-toggle").setAttribute("aria-expanded", "false");
  document.body.classList.remove("menu-open");

  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.warn(e);
    }
    cleanup = null;
  }
  // Toasts belong to the page they were raised on.
  fill(document.getElementById("toasts"));
  const mine = ++generation;
  if (r.page === "missing") {
    fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the overview")));
    return;
  }
  if (s && r.page !== "signin") live.start();
  main.dataset.page = r.page;
  const mod = await pages[r.page]();
  if (mine !== generation) return;
  fill(main);
  const done = await mod.render(main, r.params, r.query);
  if (mine !== generation) {
    if (typeof done === "function") done();
    return;
  }
  cleanup = typeof done === "function" ? done : null;
}

const dot = h("span", { class: "live-dot", title: "live stream", role: "img" });
live.onState((st) => {
  dot.dataset.state = st;
  dot.setAttribute("aria-label", `live stream: ${st}`);
  dot.title = `live stream: ${st}`;
});

function renderWho() {
  const who = document.getElementById("who");
  const s = session();
  if (!s) {
    fill(who);
    return;
  }
  fill(
    who,
    dot,
    h("span", { class: `role r-${s.role}` }, s.role),
    h("span", { class: "sub", title: s.sub }, short(s.sub)),
    h(
      "button",
      {
        type: "button",
        class: "link",
        onclick: () => {
          live.stop();
          signOut();
          location.hash = "#/signin";
        },
      },
      "Sign out",
    ),
  );
}

whenUnauthorized(() => {
  live.stop();
  signOut();
  sessionStorage.setItem("orderflow.console.expired", "1");
  location.hash = "#/signin";
});

document.querySelector(".menu-toggle").addEventListener("click", (e) => {
  const open = e.currentTarget.getAttribute("aria-expanded") !== "true";
  e.currentTarget.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("menu-open", open);
});

window.addEventListener("hashchange", show);
show();
