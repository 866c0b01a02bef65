//! The bridge's in-process fan-out: a ring of recent events for fast resume, and one
//! mailbox per connection. Events enter in seq order; repeats (a relay republishing after
//! a crash) are dropped here, once for all connections. Each event is put only into the
//! mailboxes of the connections that may and want to see it (found through an index by
//! status filter and customer), so an event wakes only the connections it is for, and a
//! connection's bound counts only its own events: a client that cannot keep up with its
//! own events is disconnected (it resumes with `Last-Event-ID`), and nobody else waits.
//!
//! The hub also says whether the bridge should take events from the broker at all
//! ([`Feed`]): the feed binds its queue while anyone listens and unbinds a while after the
//! last connection closes, so a bridge nobody watches costs the broker and itself nothing
//! per event.

use super::{Filter, Stats};
use crate::event::Event;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

pub struct Hub {
    inner: RwLock<Inner>,
    feed: watch::Sender<Feed>,
    /// Events a connection may have waiting before it counts as too slow.
    client_buffer: usize,
    stats: Arc<Stats>,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Highest seq seen (0: none yet).
    head: i64,
    /// Seq of the last event published (not merely a head moved forward): what a
    /// connection subscribed at the time was offered.
    last_published: i64,
    subscribers: HashMap<Key, HashMap<u64, Arc<Mailbox>>>,
    next_id: u64,
    closed: bool,
}

/// Who wants events, and whether the feed delivers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feed {
    /// Open connections, and connections waiting for the feed to go live.
    pub listeners: usize,
    /// The bridge's queue is bound and the head is current: a connection may follow from
    /// it. Stays set across a broker reconnect while connections are open (the feed fills
    /// in what they missed); cleared only when nobody listens.
    pub live: bool,
    /// The bridge is shutting down: nobody should wait for the feed any more.
    pub closed: bool,
}

/// One connection's interest in the feed, from before it subscribes until it is gone.
pub(crate) struct Listening(Arc<Hub>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.feed.send_modify(|f| f.listeners -= 1);
    }
}

/// The index of subscribers: which status they ask for, and whose orders they may see
/// (None: every order).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    status: Option<String>,
    customer: Option<Uuid>,
}

impl Key {
    fn of(filter: &Filter) -> Key {
        Key {
            status: filter.status.clone(),
            customer: (!filter.actor.role.sees_all_orders()).then_some(filter.actor.id),
        }
    }
}

/// What the hub keeps for one connection: its filter, and the events for it not yet sent.
pub(crate) struct Mailbox {
    id: u64,
    key: Key,
    pub(crate) filter: Filter,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// Each event with the seq of the event the hub published before it.
    queue: VecDeque<(i64, Arc<Event>)>,
    waker: Option<Waker>,
    end: Option<Ended>,
}

/// Why the hub stopped feeding a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Its buffer was full: the client cannot keep up.
    Slow,
    /// The bridge is shutting down.
    Closed,
}

/// The next thing a connection has from the hub.
pub(crate) enum Next {
    /// An event, with the seq of the event the hub published before it (0: none): any
    /// seq between the two never went through the hub.
    Event(i64, Arc<Event>),
    Ended(Ended),
}

impl Mailbox {
    /// The next event without taking it, or why there will be none; Pending (and a wake
    /// when that changes) while there is nothing.
    pub(crate) fn poll_peek(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut slot = self.slot.lock().expect("mailbox lock");
        if let Some((prev, event)) = slot.queue.front() {
            return Poll::Ready(Next::Event(*prev, event.clone()));
        }
        if let Some(end) = slot.end {
            return Poll::Ready(Next::Ended(end));
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Drop the event [`Mailbox::poll_peek`] returned.
    pub(crate) fn pop(&self) {
        let mut slot = self.slot.lock().expect("mailbox lock");
        slot.queue.pop_front();
        // A burst's buffer is not kept by an idle connection.
        if slot.queue.is_empty() && slot.queue.capacity() > 16 {
            slot.queue = VecDeque::new();
        }
    }

    /// Offer an event; false when the mailbox is full (and now ended as slow).
    fn offer(&self, prev: i64, event: &Arc<Event>, bound: usize) -> bool {
        let mut slot = self.slot.lock().expect("mailbox lock");
        let fits = slot.queue.len() < bound;
        if fits {
            slot.queue.push_back((prev, event.clone()));
        } else {
            slot.queue = VecDeque::new();
            slot.end = Some(Ended::Slow);
        }
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        fits
    }

    fn end(&self, why: Ended) {
        let mut slot = self.slot.lock().expect("mailbox lock");
        slot.end.get_or_insert(why);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

impl Hub {
    pub fn new(capacity: usize, client_buffer: usize, stats: Arc<Stats>) -> Self {
        Hub {
            inner: RwLock::new(Inner {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                head: 0,
                last_published: 0,
                subscribers: HashMap::new(),
                next_id: 0,
                closed: false,
            }),
            feed: watch::Sender::new(Feed::default()),
            client_buffer: client_buffer.max(1),
            stats,
        }
    }

    /// Count a connection as listening (until the guard drops): the feed binds while
    /// anyone listens.
    pub(crate) fn listen(self: &Arc<Self>) -> Listening {
        self.feed.send_modify(|f| f.listeners += 1);
        Listening(self.clone())
    }

    /// Wait at most `within` for the feed to be live (or the hub closed); false if it is not.
    pub(crate) async fn wait_live(&self, within: Duration) -> bool {
        let mut feed = self.feed.subscribe();
        matches!(
            tokio::time::timeout(within, feed.wait_for(|f| f.live || f.closed)).await,
            Ok(Ok(_))
        )
    }

    /// The feed's state, to watch for listeners coming and going.
    pub fn feed(&self) -> watch::Receiver<Feed> {
        self.feed.subscribe()
    }

    /// Whether the feed is live (see [`Feed::live`]).
    pub fn is_live(&self) -> bool {
        self.feed.borrow().live
    }

    /// The feed is bound and the head current: connections may start following.
    pub fn set_live(&self) {
        self.feed
            .send_if_modified(|f| !std::mem::replace(&mut f.live, true));
    }

    /// Stop being live if nobody listens (checked and set at once, so a connection that
    /// starts listening meanwhile either keeps the feed live or waits for it to be live
    /// again). True when it stopped: the feed may unbind.
    pub fn go_idle(&self) -> bool {
        self.feed.send_if_modified(|f| {
            let idle = f.listeners == 0 && f.live;
            if idle {
                f.live = false;
            }
            idle
        })
    }

    /// Highest seq the hub has seen.
    pub fn head(&self) -> i64 {
        self.inner.read().expect("hub lock").head
    }

    /// Move the head forward without an event (when the feed binds, to the outbox's
    /// published cursor), so clients connecting without Last-Event-ID start from "now";
    /// events sequenced but not yet published arrive later through the queue or the gap
    /// fill. Only while nobody is subscribed: an open connection would see the skipped
    /// events as never offered. The ring keeps what it has; a range across the skip is not
    /// in it (see [`Hub::range`]) and replays from the outbox.
    pub fn advance_head(&self, seq: i64) {
        let mut inner = self.inner.write().expect("hub lock");
        if seq > inner.head && inner.subscribers.is_empty() {
            inner.head = seq;
            inner.last_published = seq;
        }
    }

    /// Take in an event from the broker and put it into the mailbox of every connection
    /// that may see it. Returns false for a repeat (seq already seen).
    pub fn publish(&self, event: Event) -> bool {
        let mut inner = self.inner.write().expect("hub lock");
        if event.seq <= inner.head {
            return false;
        }
        let event = Arc::new(event);
        let prev = inner.last_published;
        inner.head = event.seq;
        inner.last_published = event.seq;
        inner.events.push_back(event.clone());
        if inner.events.len() > inner.capacity {
            inner.events.pop_front();
        }
        // Offered under the lock, so `subscribe` sees every event either in the ring or
        // in its mailbox.
        let statuses = [None, event.to.clone()];
        let customers = [None, event.customer_id];
        let mut slow = Vec::new();
        for status in statuses.iter().take(if event.to.is_some() { 2 } else { 1 }) {
            for customer in customers
                .iter()
                .take(if event.customer_id.is_some() { 2 } else { 1 })
            {
                let key = Key {
                    status: status.clone(),
                    customer: *customer,
                };
                let Some(bucket) = inner.subscribers.get(&key) else {
                    continue;
                };
                for mailbox in bucket.values() {
                    if mailbox.filter.allows(&event)
                        && !mailbox.offer(prev, &event, self.client_buffer)
                    {
                        slow.push((key.clone(), mailbox.id));
                    }
                }
            }
        }
        for (key, id) in slow {
            remove(&mut inner.subscribers, &key, id);
            self.stats.slow_disconnect();
        }
        true
    }

    /// A mailbox for every event after the returned head seq that `filter` allows.
    pub(crate) fn subscribe(&self, filter: Filter) -> (Arc<Mailbox>, i64) {
        let mut inner = self.inner.write().expect("hub lock");
        let id = inner.next_id;
        inner.next_id += 1;
        let key = Key::of(&filter);
        let mailbox = Arc::new(Mailbox {
            id,
            key: key.clone(),
            filter,
            slot: Mutex::default(),
        });
        if inner.closed {
            mailbox.end(Ended::Closed);
        } else {
            inner
                .subscribers
                .entry(key)
                .or_default()
                .insert(id, mailbox.clone());
        }
        (mailbox, inner.head)
    }

    /// The connection is gone: offer it nothing more.
    pub(crate) fn unsubscribe(&self, mailbox: &Mailbox) {
        let mut inner = self.inner.write().expect("hub lock");
        remove(&mut inner.subscribers, &mailbox.key, mailbox.id);
    }

    /// Shutting down: every connection ends once it has sent what it has.
    pub fn close(&self) {
        self.feed.send_modify(|f| f.closed = true);
        let mut inner = self.inner.write().expect("hub lock");
        inner.closed = true;
        for (_, bucket) in inner.subscribers.drain() {
            for mailbox in bucket.values() {
                mailbox.end(Ended::Closed);
            }
        }
    }

    /// Events with `after < seq < before` if the ring still holds all of them.
    pub fn range(&self, after: i64, before: i64) -> Option<Vec<Arc<Event>>> {
        let inner = self.inner.read().expect("hub lock");
        let first = inner.events.front()?.seq;
        // The ring serves a range only if it holds all of it: from right after `after` up
        // to `before - 1`, which must not lie beyond what the hub has seen.
        if first > after + 1 || before > inner.head + 1 {
            return None;
        }
        // Seqs in the ring are increasing but not necessarily contiguous (a gap the bridge
        // missed while reconnecting); a range with a hole must come from the database.
        let wanted: Vec<Arc<Event>> = inner
            .events
            .iter()
            .filter(|e| e.seq > after && e.seq < before)
            .cloned()
            .collect();
        let expected = (before - after - 1).max(0) as usize;
        (wanted.len() == expected).then_some(wanted)
    }
}

fn remove(subscribers: &mut HashMap<Key, HashMap<u64, Arc<Mailbox>>>, key: &Key, id: u64) {
    if let Some(bucket) = subscribers.get_mut(key) {
        bucket.remove(&id);
        if bucket.is_empty() {
            subscribers.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Actor, Role};
    use std::task::Waker;

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
            stored: None,
        }
    }

    fn change(seq: i64, customer: Uuid, to: &str) -> Event {
        Event {
            event_type: "order.status_changed".into(),
            routing_key: "order.status_changed".into(),
            customer_id: Some(customer),
            to: Some(to.into()),
            ..ev(seq)
        }
    }

    fn filter(role: Role, id: Uuid, status: Option<&str>) -> Filter {
        Filter {
            actor: Actor { id, role },
            order_id: None,
            status: status.map(str::to_owned),
        }
    }

    /// Every event waiting in a mailbox, taken.
    fn drain(mailbox: &Mailbox) -> Vec<Result<(i64, i64), Ended>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        while let Poll::Ready(next) = mailbox.poll_peek(&mut cx) {
            match next {
                Next::Event(prev, e) => {
                    got.push(Ok((prev, e.seq)));
                    mailbox.pop();
                }
                Next::Ended(why) => {
                    got.push(Err(why));
                    break;
                }
            }
        }
        got
    }

    #[test]
    fn repeats_are_dropped_and_the_ring_is_bounded() {
        let hub = Hub::new(3, 16, Arc::default());
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
        let hub = Hub::new(10, 16, Arc::default());
        hub.publish(ev(1));
        hub.publish(ev(3));
        assert!(hub.range(0, 4).is_none());
        assert_eq!(hub.range(2, 4).unwrap().len(), 1);
    }

    #[test]
    fn a_mailbox_gets_only_what_its_filter_allows_with_the_previous_seq() {
        let hub = Hub::new(10, 16, Arc::default());
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        hub.advance_head(4);
        let (admin, head) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), None));
        assert_eq!(head, 4);
        let (cancelled, _) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), Some("cancelled")));
        let (customer, _) = hub.subscribe(filter(Role::Customer, alice, None));
        hub.publish(change(5, alice, "paid"));
        hub.publish(change(6, bob, "cancelled"));
        hub.publish(change(8, alice, "cancelled"));
        assert_eq!(drain(&admin), vec![Ok((4, 5)), Ok((5, 6)), Ok((6, 8))]);
        assert_eq!(drain(&cancelled), vec![Ok((5, 6)), Ok((6, 8))]);
        assert_eq!(drain(&customer), vec![Ok((4, 5)), Ok((6, 8))]);
        hub.unsubscribe(&customer);
        hub.publish(change(9, alice, "cancelled"));
        assert_eq!(drain(&customer), vec![]);
        hub.close();
        assert_eq!(drain(&admin), vec![Ok((8, 9)), Err(Ended::Closed)]);
        let (late, _) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), None));
        assert_eq!(drain(&late), vec![Err(Ended::Closed)]);
    }

    #[test]
    fn the_head_skips_ahead_only_while_nobody_is_subscribed() {
        let hub = Hub::new(10, 16, Arc::default());
        hub.publish(ev(1));
        hub.publish(ev(2));
        hub.advance_head(6);
        assert_eq!(hub.head(), 6, "skipped over what nobody was following");
        assert!(
            hub.range(1, 7).is_none(),
            "the ring does not cover the skipped seqs 3..=6"
        );
        let (mailbox, head) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), None));
        assert_eq!(head, 6);
        hub.advance_head(9);
        assert_eq!(hub.head(), 6, "a subscriber would miss 7..=9");
        hub.publish(ev(7));
        assert_eq!(drain(&mailbox), vec![Ok((6, 7))]);
    }

    #[tokio::test]
    async fn the_feed_goes_idle_only_when_nobody_listens() {
        let hub = Arc::new(Hub::new(10, 16, Arc::default()));
        let mut feed = hub.feed();
        assert!(
            !hub.wait_live(Duration::ZERO).await,
            "not live before it binds"
        );
        let listening = hub.listen();
        assert_eq!(feed.borrow_and_update().listeners, 1);
        hub.set_live();
        assert!(hub.wait_live(Duration::ZERO).await);
        assert!(!hub.go_idle(), "someone listens");
        drop(listening);
        assert_eq!(feed.borrow_and_update().listeners, 0);
        assert!(hub.go_idle());
        assert!(!hub.go_idle(), "already idle");
        assert!(!hub.wait_live(Duration::from_millis(10)).await);
        hub.close();
        assert!(
            hub.wait_live(Duration::ZERO).await,
            "nobody waits for the feed of a closed hub"
        );
    }

    #[test]
    fn a_full_mailbox_ends_as_slow_and_others_are_unaffected() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(10, 2, stats.clone());
        let alice = Uuid::new_v4();
        let (slow, _) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), Some("paid")));
        let (other, _) = hub.subscribe(filter(Role::Admin, Uuid::new_v4(), Some("cancelled")));
        for seq in 1..=3 {
            hub.publish(change(seq, alice, "paid"));
        }
        hub.publish(change(4, alice, "cancelled"));
        assert_eq!(drain(&slow), vec![Err(Ended::Slow)]);
        assert_eq!(drain(&other), vec![Ok((3, 4))]);
        assert_eq!(
            stats
                .slow_disconnects
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
