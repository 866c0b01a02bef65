//! The HTTP ingress: accepts orders and change-status jobs, answers reads. It writes only
//! what a request owns (an order at creation, a job row) and leaves every change of an
//! existing order to the workers, through the queue.

pub mod admin;
pub mod admission;
pub mod bulk;
pub mod console;
pub mod docs;
pub mod health;
pub mod inventory;
pub mod jobs;
pub mod limits;
pub mod orders;
pub mod overview;

use crate::auth::{HasKeys, Keys};
use crate::broker::publisher::JobPublisher;
use crate::config::IngressConfig;
use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct IngressState {
    pub pool: PgPool,
    pub keys: Keys,
    pub publisher: Arc<JobPublisher>,
    pub cfg: IngressConfig,
    pub limits: limits::Limits,
    pub admission: admission::Admission,
    /// Group commit of change-status job rows.
    pub intake: crate::orders::intake::Intake,
}

impl HasKeys for IngressState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The ingress's routes (without the operational ones; see [`health`]).
pub fn router(state: IngressState) -> Router {
    Router::new()
        .merge(orders::router())
        .merge(inventory::router())
        .merge(jobs::router())
        .merge(docs::router())
        .merge(admin::router())
        .merge(overview::router())
        .merge(bulk::router().layer(axum::extract::DefaultBodyLimit::max(
            state.cfg.bulk_body_limit_bytes,
        )))
        // Admission inside the rate limits: a caller over its limit takes no slot.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::middleware,
        ))
        // Static files, outside the per-IP limit that unauthenticated requests count against.
        .merge(console::router())
        .with_state(state)
}
