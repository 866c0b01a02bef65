//! What a change-status job asks for. Stored as `jobs.payload` by the ingress and read back
//! by the worker; the queue message carries only the job id.

use crate::domain::{Action, OrderStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The request body of `change-status`, as validated by the ingress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeStatus {
    /// The action, or `None` when the caller named a target status instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<OrderStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// The body of a job message on `orderflow.jobs`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: Uuid,
}
