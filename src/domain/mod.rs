//! The order domain: statuses, roles, actions and the one transition table that decides
//! every change. Pure data and plain functions — no I/O, no async — so that the ingress,
//! the workers, the documentation endpoint and the tests all read the same rules.

pub mod action;
pub mod change;
pub mod lifecycle;
pub mod machine;
pub mod rejection;
pub mod role;
pub mod status;

pub use action::Action;
pub use change::OrderChange;
pub use lifecycle::{BulkMode, BulkStatus, ItemOutcome, JobKind, JobStatus};
pub use machine::{
    ActionAvailability, ChangeRequest, Decision, Guard, OrderContext, StockEffect, StockLine,
    TRANSITIONS, Transition,
};
pub use rejection::{RejectCode, Rejection};
pub use role::{Actor, Role};
pub use status::{OrderStatus, PaymentStatus};
