// The console's only way to the system: the public HTTP API, same origin, with the
// signed-in operator's bearer token. Nothing here has privileges of its own.

const KEY = "orderflow.console.token";

/** An API error in the contract's shape: HTTP status, stable code, human message. */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** Decode a JWT's claims (no verification: the server verifies on every request). */
export function claimsOf(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("a token has three dot-separated parts");
  const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
  const json = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return JSON.parse(json);
}

let current = null;

/** The signed-in session: {token, role, sub, exp}, or null. */
export function session() {
  if (current) return current;
  const token = sessionStorage.getItem(KEY);
  if (!token) return null;
  try {
    const c = claimsOf(token);
    if (c.exp && c.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(KEY);
      return null;
    }
    current = { token, role: c.role, sub: c.sub, exp: c.exp };
    return current;
  } catch {
    sessionStorage.removeItem(KEY);
    return null;
  }
}

export function signIn(token) {
  const c = claimsOf(token);
  sessionStorage.setItem(KEY, token);
  current = { token, role: c.role, sub: c.sub, exp: c.exp };
  return current;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  current = null;
}

/** May the signed-in operator act (change orders, run bulks, redrive jobs)? */
export function canAct() {
  return session()?.role === "admin";
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/**
 * Call the API. `body` is sent as JSON; `headers` are added; `raw` returns the Response
 * (for CSV). Resolves to {status, body, headers}; rejects with ApiError on 4xx/5xx.
 */
export async function call(method, path, { body, headers = {}, raw = false, token } = {}) {
  const auth = token ?? session()?.token;
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (auth) init.headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `the server did not answer (${e.message})`);
  }
  if (raw && resp.ok) return resp;
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  if (!resp.ok) {
    const err = json?.error ?? {};
    if (resp.status === 401 && !token) onUnauthorized();
    throw new ApiError(resp.status, err.code ?? `http_${resp.status}`, err.message ?? text, json);
  }
  return { status: resp.status, body: json, headers: resp.headers };
}

export const get = (path, opts) => call("GET", path, opts).then((r) => r.body);
export const post = (path, body, opts = {}) => call("POST", path, { ...opts, body });

/** A fresh key for Idempotency-Key headers. */
export function newKey() {
  // crypto.randomUUID exists only in secure contexts; getRandomValues everywhere.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
