//! The actions a job can ask for. `{"to": status}` requests resolve to one of these.

use super::status::{UnknownName, wire_name};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    MarkPaid,
    Confirm,
    StartProcessing,
    Ship,
    Deliver,
    Cancel,
    Refund,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::MarkPaid,
        Action::Confirm,
        Action::StartProcessing,
        Action::Ship,
        Action::Deliver,
        Action::Cancel,
        Action::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::MarkPaid => "mark_paid",
            Action::Confirm => "confirm",
            Action::StartProcessing => "start_processing",
            Action::Ship => "ship",
            Action::Deliver => "deliver",
            Action::Cancel => "cancel",
            Action::Refund => "refund",
        }
    }
}

wire_name!(Action, "action");
