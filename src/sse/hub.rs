//! The bridge's in-process fan-out: a ring of recent events for fast resume, and a
//! broadcast channel to every connection. Events enter in seq order; repeats (a relay
//! republishing after a crash) are dropped here, once for all connections.

use crate::event::Event;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

pub struct Hub {
    inner: RwLock<Ring>,
    tx: broadcast::Sender<Arc<Event>>,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Highest seq seen (0: none yet).
    head: i64,
}

impl Hub {
    pub fn new(capacity: usize, broadcast_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(broadcast_capacity.max(16));
        Hub {
            inner: RwLock::new(Ring {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                head: 0,
            }),
            tx,
        }
    }

    /// Highest seq the hub has seen.
    pub fn head(&self) -> i64 {
        self.inner.read().expect("hub lock").head
    }

    /// Move the head forward without an event (at start, to the outbox's published cursor),
    /// so clients connecting without Last-Event-ID start from "now"; events sequenced but
    /// not yet published arrive later through the queue or the gap fill.
    pub fn advance_head(&self, seq: i64) {
        let mut ring = self.inner.write().expect("hub lock");
        if seq > ring.head && ring.events.is_empty() {
            ring.head = seq;
        }
    }

    /// Take in an event from the broker. Returns false for a repeat (seq already seen).
    pub fn publish(&self, event: Event) -> bool {
        let mut ring = self.inner.write().expect("hub lock");
        if event.seq <= ring.head {
            return false;
        }
        let event = Arc::new(event);
        ring.head = event.seq;
        ring.events.push_back(event.clone());
        if ring.events.len() > ring.capacity {
            ring.events.pop_front();
        }
        // Sent under the lock, so `subscribe` sees every event either in the ring or here.
        let _ = self.tx.send(event);
        true
    }

    /// A receiver of every event after the returned head seq.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, i64) {
        let ring = self.inner.read().expect("hub lock");
        (self.tx.subscribe(), ring.head)
    }

    /// Events with `after < seq < before` if the ring still holds all of them.
    pub fn range(&self, after: i64, before: i64) -> Option<Vec<Arc<Event>>> {
        let ring = self.inner.read().expect("hub lock");
        let first = ring.events.front()?.seq;
        // The ring serves a range only if it holds all of it: from right after `after` up
        // to `before - 1`, which must not lie beyond what the hub has seen.
        if first > after + 1 || before > ring.head + 1 {
            return None;
        }
        // Seqs in the ring are increasing but not necessarily contiguous (a gap the bridge
        // missed while reconnecting); a range with a hole must come from the database.
        let wanted: Vec<Arc<Event>> = ring
            .events
            .iter()
            .filter(|e| e.seq > after && e.seq < before)
            .cloned()
            .collect();
        let expected = (before - after - 1).max(0) as usize;
        (wanted.len() == expected).then_some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64) -> Event {
        Event {
            seq,
            event_type: "order.created".into(),
            routing_key: "order.created".into(),
            order_id: None,
            customer_id: None,
            to: None,
            traceparent: None,
            data: crate::event::data_with_seq(seq, r#"{"type": "order.created"}"#),
        }
    }

    #[test]
    fn repeats_are_dropped_and_the_ring_is_bounded() {
        let hub = Hub::new(3, 16);
        assert!(hub.publish(ev(1)));
        assert!(!hub.publish(ev(1)));
        for s in 2..=5 {
            assert!(hub.publish(ev(s)));
        }
        assert_eq!(hub.head(), 5);
        assert!(
            hub.range(0, 6).is_none(),
            "seq 1 and 2 fell out of the ring"
        );
        let got: Vec<i64> = hub.range(2, 6).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert!(
            hub.range(2, 8).is_none(),
            "seq 6 and 7 are sequenced but not seen yet"
        );
    }

    #[test]
    fn a_range_with_a_hole_is_not_served_from_memory() {
        let hub = Hub::new(10, 16);
        hub.publish(ev(1));
        hub.publish(ev(3));
        assert!(hub.range(0, 4).is_none());
        assert_eq!(hub.range(2, 4).unwrap().len(), 1);
    }
}
