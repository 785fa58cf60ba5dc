//! Records the device persists (flash on the board, files in the sim).
//!
//! Each record is a whole snapshot of one component, stored under its key: the
//! newest record per key is the state. A key-value store maps onto this
//! directly (sequential-storage's map on the chip, one atomically replaced file
//! per key in the sim), and a torn write can only lose the newest change,
//! never corrupt an older one.

use crate::inbox::InboxSnapshot;
use crate::outbox::OutboxSnapshot;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Boot,
    Outbox,
    Inbox,
    Subscription,
    SeqMark,
}

impl RecordKey {
    pub const ALL: [RecordKey; 5] = [
        RecordKey::Boot,
        RecordKey::Outbox,
        RecordKey::Inbox,
        RecordKey::Subscription,
        RecordKey::SeqMark,
    ];

    /// A stable short name (file name in the sim, key in flash).
    pub fn name(&self) -> &'static str {
        match self {
            RecordKey::Boot => "boot",
            RecordKey::Outbox => "outbox",
            RecordKey::Inbox => "inbox",
            RecordKey::Subscription => "subscription",
            RecordKey::SeqMark => "seqmark",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Boot {
        count: u32,
    },
    Outbox(OutboxSnapshot),
    Inbox(InboxSnapshot),
    /// The command subscription the broker confirmed with a SUBACK (filter,
    /// granted QoS), or None while one is requested but not yet confirmed.
    /// Why: session_present=1 only says the broker has a session, not that it
    /// holds our subscription; a link or power loss between CONNECT and SUBACK
    /// leaves a session without it. New variants go last (postcard indexes).
    Subscription(Option<(String, u8)>),
    /// Every telemetry sequence number below `next` may have been used. Kept
    /// apart from the outbox so that a corrupt or lost outbox record never
    /// brings back a number the cloud has already seen.
    SeqMark {
        next: u32,
    },
}

/// A stored record that could not be read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError;

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("stored record is corrupt or from an incompatible version")
    }
}

/// Format version byte, first in every encoded record.
const FORMAT: u8 = 1;

impl Record {
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Boot { .. } => RecordKey::Boot,
            Record::Outbox(_) => RecordKey::Outbox,
            Record::Inbox(_) => RecordKey::Inbox,
            Record::Subscription(_) => RecordKey::Subscription,
            Record::SeqMark { .. } => RecordKey::SeqMark,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = alloc::vec![FORMAT];
        // postcard cannot fail on these types except on allocation failure.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        match bytes.split_first() {
            Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|_| DecodeError),
            _ => Err(DecodeError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Entry;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let r = Record::Outbox(OutboxSnapshot {
            next_seq: 9,
            dropped_total: 1,
            entries: vec![Entry {
                seq: 8,
                payload: "{}".into(),
                sent: true,
                packet_id: None,
                resend_pid: None,
            }],
        });
        assert_eq!(Record::decode(&r.encode()), Ok(r));
        assert_eq!(Record::decode(&[]), Err(DecodeError));
        assert_eq!(Record::decode(&[2, 0]), Err(DecodeError));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn inbox_roundtrip(ids in proptest::collection::vec(".{0,12}", 0..10)) {
            let r = Record::Inbox(InboxSnapshot { ids });
            prop_assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
    }
}
