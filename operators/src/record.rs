//! Records that flow between operators: sourced events and dead letters.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::json;

/// A valid event with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    /// Input partition (Kafka partition, or index of the replay file).
    pub partition: u32,
    /// Offset within the partition (Kafka offset, or 0-based line index).
    pub offset: u64,
    /// The original line or message, kept for a possible `session_closed` dead letter.
    pub raw: String,
    /// The parsed event.
    pub event: Event,
}

/// An input that was not turned into session state, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Input partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// `session_closed`, or a reason starting with `invalid`.
    pub reason: String,
    /// The original line or message (invalid UTF-8 replaced by U+FFFD).
    pub raw: String,
}

/// Dead-letter reason of an event for a session in the closed set.
pub const SESSION_CLOSED: &str = "session_closed";

impl DeadLetter {
    /// Serializes as the spec's dead-letter line (without newline):
    /// `{"reason":..,"partition":p,"offset":o,"raw":".."}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"reason\":");
        json::write_str(out, &self.reason);
        out.extend_from_slice(b",\"partition\":");
        json::write_int(out, self.partition);
        out.extend_from_slice(b",\"offset\":");
        json::write_int(out, self.offset);
        out.extend_from_slice(b",\"raw\":");
        json::write_str(out, &self.raw);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_json_shape() {
        let d = DeadLetter {
            partition: 2,
            offset: 7,
            reason: "invalid: x".into(),
            raw: "{\"a\"".into(),
        };
        let mut out = Vec::new();
        d.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reason"], "invalid: x");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["raw"], "{\"a\"");
    }
}

#[cfg(test)]
mod exchange_tests {
    use crate::event::parse_event;
    use crate::record::Sourced;

    /// timely exchanges data between processes with bincode, which cannot read
    /// self-describing values: every event must survive it unchanged.
    #[test]
    fn events_survive_bincode() {
        let line = br#"{"event_id":"e","visitor_id":"v","project_id":1,"timestamp":1700000000000,"type":"t","value":1.5e3,"attributes":{"a":"x","b":2,"c":-3.25,"d":true,"e":null,"f":18446744073709551615},"tags":{"k":"v"},"experiments":[{"experiment_id":1,"variation_id":2}]}"#;
        let event = parse_event(line).unwrap();
        let rec = Sourced {
            partition: 3,
            offset: 9,
            raw: String::from_utf8_lossy(line).into_owned(),
            event,
        };
        let bytes = bincode::serialize(&rec).unwrap();
        let back: Sourced = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, rec);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<Sourced>(&json).unwrap(), rec);
    }
}
