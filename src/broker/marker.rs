//! The relay marker: the broker's memory of the last event any relay has sent (the queue
//! [`super::Names::relay_marker`], one message). A relay taking over checks it against
//! the outbox (`relay::check_marker`).

use crate::event::EventIdentity;

/// What the relay marker says: the last seq sent and, when it was read from the outbox,
/// which event that was. Its text is `seq outbox-id commit-time-in-µs` (a marker written
/// before the identity was recorded holds only the seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMarker {
    pub seq: i64,
    pub event: Option<EventIdentity>,
}

impl SentMarker {
    /// The marker's text read back; None if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let event = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(id), Some(micros), None) => Some(EventIdentity {
                id: id.parse().ok()?,
                created_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            }),
            _ => return None,
        };
        Some(SentMarker { seq, event })
    }
}

impl std::fmt::Display for SentMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.seq)?;
        if let Some(e) = self.event {
            write!(f, " {} {}", e.id, e.created_at.timestamp_micros())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_marker_round_trips_its_text() {
        let marker = SentMarker {
            seq: 42,
            event: Some(EventIdentity {
                id: 7,
                created_at: chrono::DateTime::from_timestamp_micros(1_764_979_200_123_456)
                    .expect("a time"),
            }),
        };
        assert_eq!(marker.to_string(), "42 7 1764979200123456");
        assert_eq!(SentMarker::parse(&marker.to_string()), Some(marker));
        // A marker written before identities were recorded: the seq alone.
        assert_eq!(
            SentMarker::parse("42\n"),
            Some(SentMarker {
                seq: 42,
                event: None
            })
        );
        assert_eq!(SentMarker::parse("42 7"), None);
        assert_eq!(SentMarker::parse("seq"), None);
    }
}
