//! Postgres access. Small functions over `&mut PgConnection` so the caller owns the
//! transaction boundary: the worker writes order, history, outbox and job outcome in one.
//! Every statement is static and checked against the schema at compile time (`query!`,
//! `query_as!`, `query_scalar!`); `.sqlx/` holds what the checks learnt, for builds without
//! a database. The one exception is `create database`: an identifier cannot be bound.

pub mod bulk;
pub mod changes;
pub mod db;
pub mod history;
pub mod inventory;
pub mod jobs;
pub mod orders;
pub mod outbox;
pub mod overview;
pub mod wire;

/// Is this database error worth retrying (the same statements may well succeed again)?
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // serialization_failure, deadlock_detected, admin_shutdown, crash_shutdown,
            // cannot_connect_now, and the whole connection-exception class.
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03")
                | Some("08000" | "08003" | "08006" | "08001" | "08004")
        ),
        _ => false,
    }
}
