//! Outbox: telemetry is queued here, published in order at QoS 1 with a
//! monotonic sequence number, and removed only when the broker acknowledges
//! it. While offline it fills; past its capacity the oldest reading is dropped
//! and counted. The broker never queues a publisher's messages (the "clean
//! session queues for publishers" pitfall), so this buffer is the only thing
//! that carries telemetry through an outage.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u32,
    pub payload: String,
    /// Transmitted at least once: any resend carries DUP.
    pub sent: bool,
    /// Packet id while in flight on the current connection (not persisted).
    #[serde(skip)]
    pub packet_id: Option<u16>,
    /// The packet id it was in flight under on the previous connection,
    /// kept for its resend into the same session (not persisted).
    #[serde(skip)]
    pub resend_pid: Option<u16>,
}

/// What survives a reboot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxSnapshot {
    pub next_seq: u32,
    pub dropped_total: u32,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Outbox {
    capacity: Option<usize>,
    queue: VecDeque<Entry>,
    next_seq: u32,
    dropped_total: u32,
}

/// Result of [`Outbox::push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub seq: u32,
    pub depth: usize,
    /// The entry dropped to make room.
    pub dropped: Option<Entry>,
}

impl Outbox {
    /// `capacity: None` is the `unbounded-buffer` negative control.
    pub fn new(capacity: Option<usize>) -> Self {
        Outbox {
            capacity: capacity.map(|c| c.max(1)),
            queue: VecDeque::new(),
            next_seq: 1,
            dropped_total: 0,
        }
    }

    /// Restores a snapshot; when it holds more readings than `capacity` (the
    /// buffer was made smaller), the oldest are dropped and counted like any
    /// overflow. Returns the dropped readings' seqs for the caller to report.
    pub fn restore(capacity: Option<usize>, snap: OutboxSnapshot) -> (Self, Vec<u32>) {
        let mut o = Outbox::new(capacity);
        o.next_seq = snap.next_seq.max(1);
        o.dropped_total = snap.dropped_total;
        o.queue = snap.entries.into();
        let mut shed = Vec::new();
        if let Some(cap) = o.capacity {
            while o.queue.len() > cap {
                if let Some(e) = o.queue.pop_front() {
                    shed.push(e.seq);
                    o.dropped_total = o.dropped_total.saturating_add(1);
                }
            }
        }
        (o, shed)
    }

    /// An empty outbox whose next reading gets `next_seq` (from the mark).
    pub fn start_at(&mut self, next_seq: u32) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    pub fn snapshot(&self) -> OutboxSnapshot {
        OutboxSnapshot {
            next_seq: self.next_seq,
            dropped_total: self.dropped_total,
            entries: self.queue.iter().cloned().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn dropped_total(&self) -> u32 {
        self.dropped_total
    }

    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Queues a reading; `make` builds the payload from (seq, drops so far).
    /// Every reading carries the running total: a count carried only by the
    /// next reading would vanish whenever that reading is dropped too. The
    /// total includes the drop this reading's own arrival makes: counted
    /// after it, the newest reading's drop reached the cloud with no reading
    /// to carry it (the dense soak found one such reading unaccounted).
    pub fn push(&mut self, make: impl FnOnce(u32, u32) -> String) -> Pushed {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let mut dropped = None;
        if let Some(cap) = self.capacity {
            if self.queue.len() >= cap {
                dropped = self.queue.pop_front();
                self.dropped_total = self.dropped_total.saturating_add(1);
            }
        }
        let payload = make(seq, self.dropped_total);
        self.queue.push_back(Entry {
            seq,
            payload,
            sent: false,
            packet_id: None,
            resend_pid: None,
        });
        Pushed {
            seq,
            depth: self.queue.len(),
            dropped,
        }
    }

    /// Entries in order that are not in flight on this connection.
    pub fn next_unsent(&mut self) -> Option<&mut Entry> {
        self.queue.iter_mut().find(|e| e.packet_id.is_none())
    }

    pub fn in_flight(&self) -> usize {
        self.queue.iter().filter(|e| e.packet_id.is_some()).count()
    }

    /// The packet id of the oldest reading in flight.
    pub fn oldest_in_flight(&self) -> Option<u16> {
        self.queue.iter().find_map(|e| e.packet_id)
    }

    /// The broker acknowledged `packet_id`: the entry leaves the buffer.
    pub fn ack(&mut self, packet_id: u16) -> Option<Entry> {
        let pos = self
            .queue
            .iter()
            .position(|e| e.packet_id == Some(packet_id))?;
        self.queue.remove(pos)
    }

    /// A new connection to the same session: what was in flight goes out
    /// again under the packet ids the broker knows it by; returns them.
    pub fn resend_in_flight(&mut self) -> Vec<u16> {
        self.queue
            .iter_mut()
            .filter_map(|e| {
                e.resend_pid = e.packet_id.take();
                e.resend_pid
            })
            .collect()
    }

    /// `pid` could not be kept: its entry goes out under a new one.
    pub fn forget_pid(&mut self, pid: u16) {
        for e in self.queue.iter_mut().filter(|e| e.resend_pid == Some(pid)) {
            e.resend_pid = None;
        }
    }

    /// `pid` is no longer in flight; its entry waits to be sent again.
    pub fn forget_in_flight_pid(&mut self, pid: u16) {
        for e in self.queue.iter_mut().filter(|e| e.packet_id == Some(pid)) {
            e.packet_id = None;
        }
    }

    /// The connection is gone: nothing is in flight any more.
    pub fn forget_in_flight(&mut self) -> Vec<u16> {
        self.queue
            .iter_mut()
            .filter_map(|e| e.packet_id.take())
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    fn p(seq: u32, d: u32) -> String {
        format!("{{\"seq\":{seq},\"dropped\":{d}}}")
    }

    #[test]
    fn drops_oldest_and_each_reading_carries_every_drop_so_far() {
        let mut o = Outbox::new(Some(3));
        for _ in 0..3 {
            assert_eq!(o.push(p).dropped, None);
        }
        let r = o.push(p);
        assert_eq!(r.dropped.unwrap().seq, 1);
        assert_eq!(r.depth, 3);
        let r = o.push(p);
        assert_eq!(r.dropped.unwrap().seq, 2);
        // every reading carries the running total of drops, its own
        // arrival's included: the newest reading accounts for every drop
        o.push(p);
        let payloads: Vec<&str> = o.entries().map(|e| e.payload.as_str()).collect();
        assert_eq!(
            payloads,
            [
                "{\"seq\":4,\"dropped\":1}",
                "{\"seq\":5,\"dropped\":2}",
                "{\"seq\":6,\"dropped\":3}"
            ]
        );
        assert_eq!(o.dropped_total(), 3);
    }

    #[test]
    fn ack_removes_only_the_acked_entry() {
        let mut o = Outbox::new(Some(8));
        o.push(p);
        o.push(p);
        o.next_unsent().unwrap().packet_id = Some(7);
        assert_eq!(o.in_flight(), 1);
        assert_eq!(o.ack(9), None);
        assert_eq!(o.ack(7).unwrap().seq, 1);
        assert_eq!(o.next_unsent().unwrap().seq, 2);
    }

    proptest! {
        /// Any sequence of pushes, sends, acks, disconnects and reboots keeps
        /// the buffer bounded, in order, and loses nothing but counted drops.
        #[test]
        fn ordered_bounded_and_accounted(cap in 1usize..20, ops in proptest::collection::vec(0u8..5, 0..200)) {
            let mut o = Outbox::new(Some(cap));
            let mut pid = 1u16;
            let mut acked = 0u32;
            for op in ops {
                match op {
                    0 | 1 => { o.push(p); }
                    2 => if let Some(e) = o.next_unsent() { e.packet_id = Some(pid); e.sent = true; pid += 1; },
                    3 => {
                        let first = o.entries().find(|e| e.packet_id.is_some()).and_then(|e| e.packet_id);
                        if let Some(id) = first { o.ack(id).unwrap(); acked += 1; }
                    }
                    _ => { let snap = o.snapshot(); o = Outbox::restore(Some(cap), snap).0; }
                }
                prop_assert!(o.len() <= cap);
                let seqs: Vec<u32> = o.entries().map(|e| e.seq).collect();
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(acked + o.dropped_total() + o.len() as u32, o.next_seq() - 1);
            }
        }
    }
}
