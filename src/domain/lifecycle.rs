//! The lifecycles around an order's changes: a job from `queued` to exactly one terminal
//! status, a bulk operation from `queued` to its end, and each bulk item's outcome. Typed
//! here, with one wire name each (API.md), so that no module matches on a string.

use super::status::{UnknownName, wire_name};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a job asks for: one order's change, or a whole bulk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    ChangeStatus,
    Bulk,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::ChangeStatus, JobKind::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ChangeStatus => "change_status",
            JobKind::Bulk => "bulk",
        }
    }
}

/// A job's status (API.md, "Jobs"). Every accepted job reaches exactly one terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Rejected,
    Retrying,
    Dead,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Rejected,
        JobStatus::Retrying,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Rejected => "rejected",
            JobStatus::Retrying => "retrying",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Rejected | JobStatus::Dead | JobStatus::Cancelled
        )
    }
}

/// A bulk operation's status (API.md, "Bulk").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkStatus {
    Queued,
    Running,
    Completed,
    /// An atomic bulk with at least one rejection: nothing was changed.
    Rejected,
    Cancelled,
    /// The bulk could not be worked (a defect); its error says why.
    Failed,
}

impl BulkStatus {
    pub const ALL: [BulkStatus; 6] = [
        BulkStatus::Queued,
        BulkStatus::Running,
        BulkStatus::Completed,
        BulkStatus::Rejected,
        BulkStatus::Cancelled,
        BulkStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BulkStatus::Queued => "queued",
            BulkStatus::Running => "running",
            BulkStatus::Completed => "completed",
            BulkStatus::Rejected => "rejected",
            BulkStatus::Cancelled => "cancelled",
            BulkStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, BulkStatus::Queued | BulkStatus::Running)
    }

    /// The terminal status of the job that carries a bulk ending in this status.
    pub fn job_status(self) -> JobStatus {
        match self {
            BulkStatus::Completed => JobStatus::Succeeded,
            BulkStatus::Rejected => JobStatus::Rejected,
            BulkStatus::Cancelled => JobStatus::Cancelled,
            BulkStatus::Failed | BulkStatus::Queued | BulkStatus::Running => JobStatus::Dead,
        }
    }
}

/// How a bulk applies: every order that may move (`best_effort`), or all or none (`atomic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkMode {
    BestEffort,
    Atomic,
}

impl BulkMode {
    pub const ALL: [BulkMode; 2] = [BulkMode::BestEffort, BulkMode::Atomic];

    pub fn as_str(self) -> &'static str {
        match self {
            BulkMode::BestEffort => "best_effort",
            BulkMode::Atomic => "atomic",
        }
    }
}

/// What became of one order of a bulk (API.md, bulk results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    Applied,
    Rejected,
    /// The order could not be written (a defect isolated to that order).
    Failed,
    /// Not attempted: the bulk was cancelled, or an atomic bulk was aborted.
    Skipped,
}

impl ItemOutcome {
    pub const ALL: [ItemOutcome; 4] = [
        ItemOutcome::Applied,
        ItemOutcome::Rejected,
        ItemOutcome::Failed,
        ItemOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Applied => "applied",
            ItemOutcome::Rejected => "rejected",
            ItemOutcome::Failed => "failed",
            ItemOutcome::Skipped => "skipped",
        }
    }
}

wire_name!(JobKind, "job kind");
wire_name!(JobStatus, "job status");
wire_name!(BulkStatus, "bulk status");
wire_name!(BulkMode, "bulk mode");
wire_name!(ItemOutcome, "item outcome");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_text_and_json() {
        fn check<T>(all: &[T])
        where
            T: Copy + PartialEq + fmt::Debug + FromStr + Serialize + fmt::Display,
            <T as FromStr>::Err: fmt::Debug,
        {
            for v in all {
                let name = v.to_string();
                assert_eq!(name.parse::<T>().unwrap(), *v);
                assert_eq!(serde_json::to_value(v).unwrap(), name.as_str());
            }
        }
        check(&JobKind::ALL);
        check(&JobStatus::ALL);
        check(&BulkStatus::ALL);
        check(&BulkMode::ALL);
        check(&ItemOutcome::ALL);
    }

    #[test]
    fn a_bulk_job_ends_in_the_status_its_bulk_ends_in() {
        for s in BulkStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(s.job_status().is_terminal(), "{s}");
        }
        assert_eq!(BulkStatus::Completed.job_status(), JobStatus::Succeeded);
        assert_eq!(BulkStatus::Failed.job_status(), JobStatus::Dead);
    }
}
