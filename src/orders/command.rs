//! What a change-status request asks for, parsed once: the single path's body, a bulk's
//! change and the job payload the worker reads back all become a [`ChangeCommand`]
//! through [`ChangeCommand::parse`], so the rules below are checked in one place.

use crate::domain::{Action, OrderStatus};
use serde::{Deserialize, Serialize};

pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_TRACKING_NUMBER_CHARS: usize = 100;

/// The change asked for: an action, or a target status the machine finds the action for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Action(Action),
    To(OrderStatus),
}

/// A well-formed change request. Whether it may apply is the state machine's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ChangeBody", into = "ChangeBody")]
pub struct ChangeCommand {
    pub target: Target,
    pub reason: Option<String>,
    pub expected_version: Option<i64>,
    pub tracking_number: Option<String>,
}

/// The wire shape (request body of `change-status`, and `jobs.payload`). Unknown fields
/// are refused: a client that tries to set `status` or `version` learns at once it cannot.
/// (No `#[serde(default)]`: with it serde would read a JSON array as this struct.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "A status change: exactly one of `action` and `to`. `tracking_number` is required to ship. Text is free of NUL characters."
)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<OrderStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 500, pattern = "^[^\\u0000]*$")]
    pub reason: Option<String>,
    /// The order version the change expects (also `If-Match`); 409 `version_conflict`
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100, pattern = "^[^\\u0000]*$")]
    pub tracking_number: Option<String>,
}

/// Why a change request is malformed (a 400: nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCommand(pub String);

/// Text that enters the system: bounded, and free of NUL (Postgres refuses it in text and
/// JSON, so it would otherwise fail far from where it came in).
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidCommand> {
    if value.contains('\0') {
        return Err(InvalidCommand(format!(
            "`{field}` must not contain NUL characters"
        )));
    }
    if value.chars().count() > max_chars {
        return Err(InvalidCommand(format!(
            "`{field}` is at most {max_chars} characters"
        )));
    }
    Ok(())
}

impl ChangeCommand {
    pub fn parse(body: ChangeBody) -> Result<Self, InvalidCommand> {
        let target = match (body.action, body.to) {
            (Some(action), None) => Target::Action(action),
            (None, Some(to)) => Target::To(to),
            _ => {
                return Err(InvalidCommand(
                    "give exactly one of `action` and `to`".into(),
                ));
            }
        };
        if let Some(reason) = &body.reason {
            check_text("reason", reason, MAX_REASON_CHARS)?;
        }
        if let Some(tracking) = &body.tracking_number {
            check_text("tracking_number", tracking, MAX_TRACKING_NUMBER_CHARS)?;
        }
        Ok(ChangeCommand {
            target,
            reason: body.reason,
            expected_version: body.expected_version,
            tracking_number: body.tracking_number,
        })
    }

    /// Merge `If-Match` into the expected version; the two must agree when both are given.
    pub fn expecting(mut self, if_match: Option<i64>) -> Result<Self, InvalidCommand> {
        match (self.expected_version, if_match) {
            (Some(a), Some(b)) if a != b => Err(InvalidCommand(
                "`expected_version` and If-Match disagree".into(),
            )),
            (a, b) => {
                self.expected_version = a.or(b);
                Ok(self)
            }
        }
    }

    pub fn action(&self) -> Option<Action> {
        match self.target {
            Target::Action(action) => Some(action),
            Target::To(_) => None,
        }
    }
}

impl TryFrom<ChangeBody> for ChangeCommand {
    type Error = InvalidCommand;
    fn try_from(body: ChangeBody) -> Result<Self, Self::Error> {
        ChangeCommand::parse(body)
    }
}

impl From<ChangeCommand> for ChangeBody {
    fn from(c: ChangeCommand) -> Self {
        let (action, to) = match c.target {
            Target::Action(a) => (Some(a), None),
            Target::To(t) => (None, Some(t)),
        };
        ChangeBody {
            action,
            to,
            reason: c.reason,
            expected_version: c.expected_version,
            tracking_number: c.tracking_number,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(action: Option<Action>, to: Option<OrderStatus>) -> ChangeBody {
        ChangeBody {
            action,
            to,
            ..ChangeBody::default()
        }
    }

    #[test]
    fn exactly_one_of_action_and_to() {
        assert!(ChangeCommand::parse(body(None, None)).is_err());
        assert!(
            ChangeCommand::parse(body(Some(Action::Confirm), Some(OrderStatus::Confirmed)))
                .is_err()
        );
        let by_target = ChangeCommand::parse(body(None, Some(OrderStatus::Shipped))).unwrap();
        assert_eq!(by_target.target, Target::To(OrderStatus::Shipped));
    }

    #[test]
    fn text_is_bounded_and_free_of_nul() {
        let mut b = body(Some(Action::Cancel), None);
        b.reason = Some("a".repeat(MAX_REASON_CHARS));
        assert!(ChangeCommand::parse(b.clone()).is_ok());
        b.reason = Some("a".repeat(MAX_REASON_CHARS + 1));
        assert!(ChangeCommand::parse(b.clone()).is_err());
        b.reason = Some("a\0b".into());
        assert!(ChangeCommand::parse(b.clone()).is_err());
        b.reason = None;
        b.tracking_number = Some("x".repeat(MAX_TRACKING_NUMBER_CHARS + 1));
        assert!(ChangeCommand::parse(b).is_err());
    }

    #[test]
    fn the_stored_payload_round_trips_in_the_wire_shape() {
        let cmd = ChangeCommand::parse(ChangeBody {
            action: Some(Action::Ship),
            tracking_number: Some("TRK-1".into()),
            expected_version: Some(3),
            ..ChangeBody::default()
        })
        .unwrap();
        let json = serde_json::to_value(&cmd).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "ship", "tracking_number": "TRK-1", "expected_version": 3})
        );
        assert_eq!(serde_json::from_value::<ChangeCommand>(json).unwrap(), cmd);
    }

    #[test]
    fn if_match_must_agree_with_expected_version() {
        let mut b = body(Some(Action::Confirm), None);
        b.expected_version = Some(2);
        let cmd = ChangeCommand::parse(b).unwrap();
        assert!(cmd.clone().expecting(Some(3)).is_err());
        assert_eq!(
            cmd.clone().expecting(Some(2)).unwrap().expected_version,
            Some(2)
        );
        let plain = ChangeCommand::parse(body(Some(Action::Confirm), None)).unwrap();
        assert_eq!(plain.expecting(Some(4)).unwrap().expected_version, Some(4));
    }
}
