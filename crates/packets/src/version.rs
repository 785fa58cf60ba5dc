use core::fmt;
use core::str::FromStr;

/// The MQTT protocol version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MqttVersion {
    V3_1_1,
    V5,
}

impl MqttVersion {
    /// mqtt-protocol-core's name for it.
    pub fn core(self) -> mqtt_protocol_core::mqtt::Version {
        match self {
            MqttVersion::V3_1_1 => mqtt_protocol_core::mqtt::Version::V3_1_1,
            MqttVersion::V5 => mqtt_protocol_core::mqtt::Version::V5_0,
        }
    }

    /// The protocol level byte of a CONNECT (4 or 5).
    pub fn level(self) -> u8 {
        match self {
            MqttVersion::V3_1_1 => 4,
            MqttVersion::V5 => 5,
        }
    }
}

/// A version string that is neither 3.1.1 nor 5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseVersionError;

impl fmt::Display for ParseVersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MQTT version: expected 3.1.1 or 5")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseVersionError {}

impl FromStr for MqttVersion {
    type Err = ParseVersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "3.1.1" | "3" | "4" => Ok(MqttVersion::V3_1_1),
            "5" | "5.0" => Ok(MqttVersion::V5),
            _ => Err(ParseVersionError),
        }
    }
}

impl fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttVersion::V3_1_1 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}
