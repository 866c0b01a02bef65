//! Why a change was refused. Codes are part of the public contract (API.md): stable, snake_case.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The order's status does not allow this action (or no action leads to the target).
    InvalidTransition,
    /// This role may never perform this action.
    ForbiddenRole,
    /// The caller may see the order but not change it this way.
    NotOwner,
    /// The action needs a payment status the order does not have.
    PaymentRequired,
    /// Some item's sku does not have enough available stock.
    OutOfStock,
    /// The caller's `expected_version` is not the order's current version.
    VersionConflict,
    /// The request lacks a field this action needs (e.g. a tracking number to ship).
    MissingField,
}

impl RejectCode {
    pub const ALL: [RejectCode; 7] = [
        RejectCode::InvalidTransition,
        RejectCode::ForbiddenRole,
        RejectCode::NotOwner,
        RejectCode::PaymentRequired,
        RejectCode::OutOfStock,
        RejectCode::VersionConflict,
        RejectCode::MissingField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidTransition => "invalid_transition",
            RejectCode::ForbiddenRole => "forbidden_role",
            RejectCode::NotOwner => "not_owner",
            RejectCode::PaymentRequired => "payment_required",
            RejectCode::OutOfStock => "out_of_stock",
            RejectCode::VersionConflict => "version_conflict",
            RejectCode::MissingField => "missing_field",
        }
    }

    /// The HTTP status API.md gives this code.
    pub fn http_status(self) -> u16 {
        match self {
            RejectCode::ForbiddenRole => 403,
            RejectCode::InvalidTransition | RejectCode::VersionConflict => 409,
            RejectCode::NotOwner
            | RejectCode::PaymentRequired
            | RejectCode::OutOfStock
            | RejectCode::MissingField => 422,
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused change: a business outcome, recorded on the job and never retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
