//! Identity: the client ID is derived from the factory MAC, so it is the same on
//! every boot and unique per chip. A random ID would orphan the persistent
//! session on every reconnect (the "random client ID" pitfall).

use alloc::format;
use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// A 48-bit hardware MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacError {
    /// Not 12 hex digits (separators `:` or `-` between bytes are allowed).
    Length(usize),
    /// A character that is not a hex digit.
    NotHex(char),
    /// All zeros or all ones: an unprogrammed eFuse or a bad read, never a real chip.
    Unprogrammed,
    /// The multicast bit is set: not a station address.
    Multicast,
}

impl fmt::Display for MacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacError::Length(n) => write!(
                f,
                "a MAC has 12 hex digits (e.g. 24:0a:c4:12:34:56 or 240ac4123456), found {n}"
            ),
            MacError::NotHex(c) => write!(f, "'{c}' is not a hex digit in the MAC"),
            MacError::Unprogrammed => {
                f.write_str("MAC is all zeros or all ones: an unprogrammed or unreadable eFuse")
            }
            MacError::Multicast => {
                f.write_str("MAC has the multicast bit set: not a station address")
            }
        }
    }
}

impl Mac {
    /// Checks that the address could belong to a real station interface.
    pub fn new(bytes: [u8; 6]) -> Result<Self, MacError> {
        if bytes == [0; 6] || bytes == [0xff; 6] {
            return Err(MacError::Unprogrammed);
        }
        if bytes[0] & 1 == 1 {
            return Err(MacError::Multicast);
        }
        Ok(Mac(bytes))
    }

    /// The MAC as 12 lowercase hex digits, no separators.
    pub fn to_hex(&self) -> String {
        let b = self.0;
        format!(
            "{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nibbles = [0u8; 12];
        let mut n = 0usize;
        for c in s.trim().chars() {
            if c == ':' || c == '-' {
                continue;
            }
            let v = c.to_digit(16).ok_or(MacError::NotHex(c))? as u8;
            if n < 12 {
                nibbles[n] = v;
            }
            n += 1;
        }
        if n != 12 {
            return Err(MacError::Length(n));
        }
        let mut bytes = [0u8; 6];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nibbles[2 * i] << 4) | nibbles[2 * i + 1];
        }
        Mac::new(bytes)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// `<chip>-<MAC as 12 lowercase hex>`, e.g. `esp32c3-240ac4123456`.
pub fn client_id(chip: &str, mac: &Mac) -> String {
    format!("{chip}-{}", mac.to_hex())
}

/// MQTT 3.1.1 (3.1.3.1) only obliges a server to accept 1..=23 bytes of
/// `[0-9a-zA-Z]`; most accept more. Returns a warning to print, if any.
pub fn client_id_advice(id: &str) -> Option<String> {
    if id.len() > 23 {
        return Some(format!(
            "client ID '{id}' is {} bytes: MQTT 3.1.1 servers must only accept up to 23",
            id.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn worked_example() {
        let mac: Mac = "24:0a:c4:12:34:56".parse().unwrap();
        assert_eq!(client_id("esp32c3", &mac), "esp32c3-240ac4123456");
        let same: Mac = "240AC4123456".parse().unwrap();
        assert_eq!(mac, same);
        assert_eq!(client_id_advice("esp32c3-240ac4123456"), None);
    }

    #[test]
    fn invalid_macs_are_refused_with_a_reason() {
        assert_eq!("24:0a:c4".parse::<Mac>(), Err(MacError::Length(6)));
        assert_eq!("zz0ac4123456".parse::<Mac>(), Err(MacError::NotHex('z')));
        assert_eq!("000000000000".parse::<Mac>(), Err(MacError::Unprogrammed));
        assert_eq!("ffffffffffff".parse::<Mac>(), Err(MacError::Unprogrammed));
        assert_eq!("250ac4123456".parse::<Mac>(), Err(MacError::Multicast));
        assert!(MacError::Length(3).to_string().contains("12 hex digits"));
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(bytes in any::<[u8; 6]>()) {
            if let Ok(mac) = Mac::new(bytes) {
                let text = mac.to_string();
                prop_assert_eq!(text.parse::<Mac>().unwrap(), mac);
                let id = client_id("esp32c3", &mac);
                prop_assert_eq!(id.len(), 20);
                prop_assert_eq!(id, client_id("esp32c3", &mac.to_hex().parse().unwrap()));
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Mac>();
        }
    }
}

/// The topics of one device: `<prefix>/<client id>/<leaf>`. The device
/// publishes and subscribes through these, and the runner's cloud side
/// addresses the device through the same helper, so the two cannot differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    pub client_id: String,
}

impl Topics {
    /// The prefix every device uses unless configured otherwise.
    pub const DEFAULT_PREFIX: &'static str = "devices";

    pub fn new(prefix: &str, client_id: &str) -> Topics {
        Topics {
            prefix: prefix.into(),
            client_id: client_id.into(),
        }
    }

    fn leaf(&self, leaf: &str) -> String {
        format!("{}/{}/{}", self.prefix, self.client_id, leaf)
    }

    /// Commands to the device.
    pub fn cmd(&self) -> String {
        self.leaf("cmd")
    }

    /// Readings from the device.
    pub fn telemetry(&self) -> String {
        self.leaf("telemetry")
    }

    /// `online` (retained) or the Last Will `offline`.
    pub fn status(&self) -> String {
        self.leaf("status")
    }
}
