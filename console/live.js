// One live event stream per tab (GET /orders/events/subscribe, `?access_token=` because
// EventSource cannot set headers), fanned out to whichever page listens. EventSource
// reconnects by itself and resumes with Last-Event-ID, so nothing is missed in between.

import { session } from "./api.js";

const TYPES = ["order.created", "order.status_changed", "bulk.progress", "reset"];
const listeners = new Set();
const stateListeners = new Set();
let source = null;
let state = "off";
/** Arrival times (ms) of order events in the last minute, for the live rate. */
const arrivals = [];
/** The latest events this tab received, newest last, for pages that mount later. */
const recentEvents = [];
const RECENT_KEPT = 15;

function setState(s) {
  state = s;
  for (const fn of stateListeners) fn(s);
}

export function start() {
  const s = session();
  if (!s || source) return;
  const url = `/orders/events/subscribe?access_token=${encodeURIComponent(s.token)}`;
  source = new EventSource(url);
  setState("connecting");
  source.onopen = () => setState("live");
  source.onerror = () => setState(source?.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  for (const type of TYPES) {
    source.addEventListener(type, (m) => {
      let data = null;
      try {
        data = JSON.parse(m.data);
      } catch {
        return;
      }
      recentEvents.push({ type, data });
      if (recentEvents.length > RECENT_KEPT) recentEvents.shift();
      if (type.startsWith("order.")) {
        const now = Date.now();
        arrivals.push(now);
        while (arrivals.length && arrivals[0] < now - 60000) arrivals.shift();
      }
      for (const fn of listeners) {
        try {
          fn(type, data, m.lastEventId);
        } catch (e) {
          console.warn("live listener failed", e);
        }
      }
    });
  }
}

export function stop() {
  source?.close();
  source = null;
  setState("off");
}

/** Listen to every event; returns the unsubscribe function. */
export function on(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function onState(fn) {
  stateListeners.add(fn);
  fn(state);
  return () => stateListeners.delete(fn);
}

/** Order events per second over the last `secs` seconds, as this tab received them. */
export function rate(secs = 10) {
  const since = Date.now() - secs * 1000;
  let n = 0;
  for (let i = arrivals.length - 1; i >= 0 && arrivals[i] >= since; i--) n++;
  return n / secs;
}

/** The latest events received (oldest first): [{type, data}]. */
export function recent() {
  return [...recentEvents];
}
