// Sign in by pasting a token. The role inside decides what the console offers; the token
// is checked against the API before it is kept (sessionStorage: this tab only).

import { claimsOf, get, signIn, signOut, ApiError } from "../api.js";
import { h, fill } from "../ui.js";

export function render(main) {
  const expired = sessionStorage.getItem("orderflow.console.expired");
  sessionStorage.removeItem("orderflow.console.expired");
  const token = h("textarea", {
    id: "token",
    name: "token",
    rows: "5",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "eyJhbGciOiJIUzI1NiIs…",
    "aria-describedby": "token-help",
  });
  const message = h("p", { class: "form-error", role: "alert", id: "signin-error" });
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to the orderflow console"),
    expired ? h("p", { class: "notice" }, "Your token expired or was refused; paste a new one.") : null,
    h("label", { for: "token" }, "Access token (JWT)"),
    token,
    h(
      "div",
      { id: "token-help", class: "help" },
      h("p", {}, "Mint a token with the server's secret, then paste it here:"),
      h("pre", {}, h("code", {}, "orderflow token --role admin --sub <uuid> --ttl 1h")),
      h(
        "ul",
        {},
        h("li", {}, h("strong", {}, "admin"), " sees everything and acts: order actions, bulk changes, job retries."),
        h("li", {}, h("strong", {}, "support"), " sees everything and previews bulks, read-only."),
        h("li", {}, h("strong", {}, "customer"), " tokens are refused: the console is for operators."),
      ),
      h("p", {}, "The token stays in this tab only (session storage) and is sent to this server alone."),
    ),
    message,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(message);
    const raw = token.value.trim().replace(/^Bearer\s+/i, "");
    let claims;
    try {
      claims = claimsOf(raw);
    } catch (err) {
      fill(message, `That is not a token: ${err.message}.`);
      return;
    }
    if (claims.role === "customer" || !["admin", "support"].includes(claims.role)) {
      fill(message, `A ${claims.role ?? "token without a"} role cannot use the console: it is for admin and support.`);
      return;
    }
    try {
      // The server decides: a wrong signature or an expired token is a 401 here.
      await get("/admin/overview", { token: raw });
    } catch (err) {
      const why = err instanceof ApiError && err.status === 401 ? "the server refused this token (expired or signed with another secret)" : err.message;
      fill(message, `Sign-in failed: ${why}.`);
      signOut();
      return;
    }
    signIn(raw);
    location.hash = "#/";
  });
  fill(main, form);
  token.focus();
}
