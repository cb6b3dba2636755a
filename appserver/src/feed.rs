//! The stream's feed: the server-sent events of the latest stored
//! messages, each rendered once, for every subscriber.
//!
//! Without it, every subscriber read each new message back from the store
//! and rendered its JSON from the stored header's XML: with one subscriber
//! that was a quarter of the appserver's CPU under the fan-in of 1,000
//! children, and each further subscriber cost as much again. Now:
//!
//! 1. while anyone is listening, [`crate::ingest`] renders each message's
//!    JSON on the exchange's own task (both cores at once), from the header
//!    and content it has just checked, before its sequence number is known
//!    ([`Rendered`]);
//! 2. the store writer, right after the commit and before it announces the
//!    new last sequence number, [`Feed::publish`]es them in sequence order;
//! 3. a subscriber that has caught up copies its events out of the feed
//!    ([`Feed::after`]).
//!
//! The feed is a cache, never the record: it holds the latest
//! [`FEED_BYTES`] of events, and only an unbroken run of sequence numbers
//! (a message stored while nobody listened breaks the run, and the feed
//! starts again after it). A subscriber whose next message is not in the
//! feed reads the store, as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rsnet_common::id::ComponentId;
use rsnet_common::json::MessageView;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::{Content, Header, Timestamp};

/// Bytes of rendered events the feed keeps (about 7,000 alarms of 512 bytes).
pub const FEED_BYTES: usize = 8 << 20;

/// The field whose value is known only once the message is stored.
const SEQ: &str = "seq";

/// One stored message as the stream sends it, with what a subscriber's
/// filter and scope read.
pub struct Event {
    /// Its sequence number.
    pub seq: u64,
    /// Where it came from.
    pub source: ComponentId,
    /// Class.
    pub class: String,
    /// Subclass.
    pub subclass: Option<String>,
    /// When its source made it.
    pub created: Timestamp,
    /// `id: SEQ\nevent: message\ndata: JSON\n\n`.
    pub text: Bytes,
}

/// A message rendered before the store gave it its sequence number.
pub struct Rendered {
    source: ComponentId,
    class: String,
    subclass: Option<String>,
    created: Timestamp,
    /// The JSON up to the sequence number's value, and after it.
    before: String,
    after: String,
}

impl Rendered {
    /// Renders a message as it will be stored: `header` with the
    /// appserver's hop, received at `received`. `None` for a header with
    /// no source (nothing the appserver stores).
    pub fn of(header: &Header, content: &Content, received: Timestamp) -> Option<Rendered> {
        let source = header.source()?.origin.clone();
        let (before, after) = MessageView::new(header, Ok(content))
            .with_u64(SEQ, 0)
            .with_time("received", received)
            .to_json_around(SEQ);
        Some(Rendered {
            source,
            class: header.class.clone(),
            subclass: header.subclass.clone(),
            created: header.created,
            before,
            after,
        })
    }

    fn event(self, seq: u64) -> Event {
        let n = seq.to_string();
        let mut t = Vec::with_capacity(48 + self.before.len() + self.after.len());
        push_event(&mut t, seq, &[&self.before, &n, &self.after]);
        Event {
            seq,
            source: self.source,
            class: self.class,
            subclass: self.subclass,
            created: self.created,
            text: Bytes::from(t),
        }
    }
}

/// Appends one server-sent event of message `seq` to `out`: `id: SEQ`,
/// `event: message`, and its JSON (given in pieces) as `data`. The one
/// place the stream's event format is written, for the feed and for
/// messages read back from the store alike.
pub fn push_event(out: &mut Vec<u8>, seq: u64, json: &[&str]) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: message\ndata: ");
    for piece in json {
        out.extend_from_slice(piece.as_bytes());
    }
    out.extend_from_slice(b"\n\n");
}

/// The latest events, shared by the store writer and every subscriber.
pub struct Feed {
    ring: Mutex<Ring>,
    listeners: AtomicUsize,
    budget: usize,
    /// Events subscribers were sent, by where they came from.
    pub from_feed: Counter,
    /// Events read back from the store for subscribers.
    pub from_store: Counter,
}

#[derive(Default)]
struct Ring {
    /// Consecutive sequence numbers, oldest first.
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

/// A subscriber's presence: while one is held, ingest renders.
pub struct Listening(Arc<Feed>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feed {
    /// An empty feed that keeps up to `budget` bytes of events.
    pub fn new(budget: usize, metrics: &Registry) -> Arc<Feed> {
        let sent = |from: &str| {
            metrics.counter_with(
                "rsnet_stream_events_total",
                &[("from", from)],
                "events sent to stream subscribers, from the feed or read back from the store",
            )
        };
        Arc::new(Feed {
            ring: Mutex::default(),
            listeners: AtomicUsize::new(0),
            budget,
            from_feed: sent("feed"),
            from_store: sent("store"),
        })
    }

    /// Is any subscriber listening (is rendering worth it)?
    pub fn listening(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Registers a subscriber until the guard is dropped.
    pub fn listen(self: &Arc<Self>) -> Listening {
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Listening(self.clone())
    }

    /// Publishes newly stored messages, in ascending sequence order, each
    /// with its rendering if it has one. Called by the store writer only,
    /// after the commit and before it announces it.
    pub fn publish(&self, stored: impl IntoIterator<Item = (u64, Option<Rendered>)>) {
        // Events are made outside the lock; a message without a rendering
        // breaks the run and starts it again after itself.
        let mut fresh: Vec<Arc<Event>> = Vec::new();
        let mut broken = false;
        for (seq, r) in stored {
            match r {
                Some(r) => fresh.push(Arc::new(r.event(seq))),
                None => {
                    broken = true;
                    fresh.clear();
                }
            }
        }
        if fresh.is_empty() && !broken {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if fresh.is_empty() && ring.events.is_empty() {
            return;
        }
        let joins = match (ring.events.back(), fresh.first()) {
            (Some(last), Some(first)) => last.seq + 1 == first.seq,
            _ => true,
        };
        if broken || !joins {
            ring.events.clear();
            ring.bytes = 0;
        }
        for e in fresh {
            ring.bytes += e.text.len();
            ring.events.push_back(e);
        }
        while ring.bytes > self.budget && ring.events.len() > 1 {
            if let Some(e) = ring.events.pop_front() {
                ring.bytes -= e.text.len();
            }
        }
    }

    /// Up to `max` events after sequence number `cursor`, oldest first, if
    /// the feed holds the one right after `cursor` (an empty list: nothing
    /// after `cursor` is published yet). `None`: read the store.
    pub fn after(&self, cursor: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let first = ring.events.front()?.seq;
        if first > cursor.saturating_add(1) {
            return None;
        }
        // Consecutive: the event after `cursor` sits at `cursor + 1 - first`.
        let skip = usize::try_from(cursor + 1 - first).unwrap_or(usize::MAX);
        Some(ring.events.iter().skip(skip).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsnet_common::model::{Alarm, AlarmState, Message, Severity};
    use rsnet_common::store::StoredMessage;

    fn message(n: u64) -> (Header, Content) {
        let src: ComponentId = "acme.p1".parse().expect("id");
        let c = Content::Alarm(Alarm {
            severity: Severity::Major,
            state: AlarmState::Raised,
            support_instance: None,
            text: format!("disk \"{n}\" full"),
            data: None,
        });
        let m = Message::forward(src.clone(), "alarm", Some("disk"), c).with_hop(&src);
        (m.header, m.content)
    }

    fn rendered(n: u64) -> Option<Rendered> {
        let (h, c) = message(n);
        Rendered::of(&h, &c, Timestamp(1_700_000_000_000 + n))
    }

    fn seqs(e: &[Arc<Event>]) -> Vec<u64> {
        e.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn an_event_is_what_the_store_would_give_the_stream() {
        let (h, c) = message(1);
        let received = Timestamp(1_700_000_000_123);
        let stored = StoredMessage {
            id: h.id,
            source: h.source().expect("source").origin.clone(),
            class: h.class.clone(),
            subclass: h.subclass.clone(),
            kind: h.kind,
            created: h.created,
            received,
            header: rsnet_common::envelope::wire::encode_header(&h).into(),
            content: rsnet_common::envelope::wire::encode_content(&c).into(),
        };
        let e = Rendered::of(&h, &c, received).expect("source").event(42);
        let want = format!(
            "id: 42\nevent: message\ndata: {}\n\n",
            crate::api::message_json(42, &stored)
        );
        assert_eq!(String::from_utf8_lossy(&e.text), want);
    }

    #[test]
    fn a_run_is_served_from_where_the_cursor_is_and_a_gap_starts_it_again() {
        let feed = Feed::new(FEED_BYTES, &Registry::default());
        assert!(feed.after(0, 10).is_none(), "empty: read the store");
        feed.publish((1..=5).map(|s| (s, rendered(s))));
        assert_eq!(seqs(&feed.after(0, 10).expect("held")), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&feed.after(2, 2).expect("held")), [3, 4]);
        assert!(feed.after(5, 10).expect("caught up").is_empty());
        // A message stored unrendered (nobody listened) breaks the run.
        feed.publish(vec![(6, None), (7, rendered(7))]);
        assert!(feed.after(5, 10).is_none(), "6 is only in the store");
        assert_eq!(seqs(&feed.after(6, 10).expect("held")), [7]);
        // So does a jump in sequence numbers.
        feed.publish(vec![(9, rendered(9))]);
        assert!(feed.after(7, 10).is_none());
        assert_eq!(seqs(&feed.after(8, 10).expect("held")), [9]);
    }

    #[test]
    fn the_oldest_events_leave_beyond_the_budget() {
        let one = rendered(1).expect("r").event(1).text.len();
        let feed = Feed::new(3 * one + 10, &Registry::default());
        feed.publish((1..=10).map(|s| (s, rendered(s))));
        assert!(feed.after(0, 100).is_none(), "1 has left");
        let held = seqs(&feed.after(7, 100).expect("held"));
        assert_eq!(held, [8, 9, 10]);
    }

    #[test]
    fn listening_lasts_as_long_as_a_guard() {
        let feed = Feed::new(FEED_BYTES, &Registry::default());
        assert!(!feed.listening());
        let a = feed.listen();
        let b = feed.listen();
        drop(a);
        assert!(feed.listening());
        drop(b);
        assert!(!feed.listening());
    }
}
