//! Bulk operations: a preview decided by the very [`Batch`] the bulk worker runs (on the
//! current state, writing nothing), the submission of a bulk (recorded, idempotent,
//! published like any job), its chunk-by-chunk [`step`]s, and the end of its job.

pub mod step;

pub use step::{Control, Lane, StepError};

use super::apply::{Batch, Origin};
use super::command::{ChangeBody, ChangeCommand};
use super::submit::publish_or_compensate;
use crate::broker::publisher::JobPublisher;
use crate::broker::{JobMessage, JobRef};
use crate::domain::{Action, Actor, BulkMode, BulkStatus, JobKind, OrderStatus, Role};
use crate::http::ApiError;
use crate::store::bulk::{self, BulkOp, NOT_FOUND, NewBulk, Selection};
use crate::store::changes::{self, Changes};
use crate::store::jobs::{self, Finished, Job, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The body of a bulk preview or status-update: a selection and the change for each order.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChange {
    pub selection: Selection,
    pub action: Option<Action>,
    pub to: Option<OrderStatus>,
    /// Required by status-update: it is written to every order's history.
    #[schema(max_length = 500, pattern = "^[^\\u0000]*$")]
    pub reason: Option<String>,
    #[schema(max_length = 100, pattern = "^[^\\u0000]*$")]
    pub tracking_number: Option<String>,
    /// Required by status-update; not allowed in a preview.
    pub mode: Option<BulkMode>,
}

impl BulkChange {
    /// The selection checked and the change parsed like any single change.
    fn command(&self) -> Result<ChangeCommand, ApiError> {
        self.selection.validate().map_err(ApiError::BadRequest)?;
        ChangeCommand::parse(ChangeBody {
            action: self.action,
            to: self.to,
            reason: self.reason.clone(),
            expected_version: None,
            tracking_number: self.tracking_number.clone(),
        })
        .map_err(|e| ApiError::BadRequest(e.0))
    }
}

/// What a bulk would do now (API.md, preview).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub matched: usize,
    pub not_found: usize,
    pub would_apply: usize,
    pub would_reject: BTreeMap<&'static str, u64>,
    pub by_status: BTreeMap<&'static str, u64>,
    #[schema(value_type = Vec<PreviewSample>)]
    pub sample: Vec<Value>,
}

/// One order of a preview's sample (the first 20 orders).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the schema of the sample entries `preview` builds
pub struct PreviewSample {
    order_id: Uuid,
    outcome: crate::domain::ItemOutcome,
    /// The rejection code, when rejected (`not_found` for an id without an order).
    code: Option<String>,
    from: Option<OrderStatus>,
    to: Option<OrderStatus>,
}

const SAMPLE: usize = 20;

/// Judge the bulk on the current state as the admin who would run it (support may preview
/// what only an admin may apply), in one read-only snapshot.
pub async fn preview(pool: &PgPool, actor: Actor, body: BulkChange) -> Result<Preview, ApiError> {
    let command = body.command()?;
    if body.mode.is_some() {
        return Err(ApiError::BadRequest(
            "`mode` belongs to status-update, not preview".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction read only")
        .execute(&mut *tx)
        .await?;
    let ids = bulk::selected(&mut tx, &body.selection).await?;
    let mut batch = Batch::load(&mut tx, &ids, false).await?;
    tx.rollback().await?;

    let judge_as = Actor {
        id: actor.id,
        role: Role::Admin,
    };
    let mut p = Preview {
        matched: 0,
        not_found: 0,
        would_apply: 0,
        would_reject: BTreeMap::new(),
        by_status: BTreeMap::new(),
        sample: Vec::new(),
    };
    for id in &ids {
        let (entry, code) = match batch.order(*id).map(|o| o.status) {
            // An explicit id without an order: the real run reports it the same way.
            None => {
                p.not_found += 1;
                (
                    json!({ "order_id": id, "outcome": "rejected", "code": NOT_FOUND }),
                    Some(NOT_FOUND),
                )
            }
            Some(status) => {
                *p.by_status.entry(status.as_str()).or_default() += 1;
                match batch.apply(*id, judge_as, &command, Origin::default()) {
                    Ok(a) => (
                        json!({ "order_id": id, "outcome": "applied", "from": a.from, "to": a.to }),
                        None,
                    ),
                    Err(r) => (
                        json!({ "order_id": id, "outcome": "rejected", "code": r.code }),
                        Some(r.code.as_str()),
                    ),
                }
            }
        };
        match code {
            None => p.would_apply += 1,
            Some(code) => *p.would_reject.entry(code).or_default() += 1,
        }
        if p.sample.len() < SAMPLE {
            p.sample.push(entry);
        }
    }
    p.matched = ids.len() - p.not_found;
    Ok(p)
}

/// A recorded bulk: new, or the first one of the actor's idempotency key.
#[derive(Debug)]
pub struct BulkSubmitted {
    pub bulk_id: Uuid,
    pub job_id: Option<Uuid>,
    pub status: BulkStatus,
    pub repeat: bool,
}

/// Record a bulk and its job in one transaction, then publish the job to the bulk queue.
#[tracing::instrument(skip_all, fields(actor = %actor.id, bulk_id), err)]
pub async fn submit(
    pool: &PgPool,
    publisher: &JobPublisher,
    actor: Actor,
    body: BulkChange,
    idempotency_key: Option<String>,
    traceparent: String,
) -> Result<BulkSubmitted, ApiError> {
    let command = body.command()?;
    if command
        .reason
        .as_deref()
        .is_none_or(|r| r.trim().is_empty())
    {
        return Err(ApiError::BadRequest(
            "a bulk change needs a `reason` (it is written to every order's history)".into(),
        ));
    }
    let mode = body
        .mode
        .ok_or_else(|| ApiError::BadRequest("`mode` is required: best_effort or atomic".into()))?;
    let selection = serde_json::to_value(&body.selection).expect("selection serializes");
    let request = serde_json::to_value(&command).expect("command serializes");
    let (bulk_id, job_id) = (Uuid::now_v7(), Uuid::now_v7());
    tracing::Span::current().record("bulk_id", tracing::field::display(bulk_id));

    let mut tx = pool.begin().await?;
    let new = NewBulk {
        id: bulk_id,
        actor_id: actor.id,
        actor_role: actor.role,
        selection: &selection,
        request: &request,
        mode,
        idempotency_key: idempotency_key.as_deref(),
    };
    if bulk::insert(&mut tx, &new).await?.is_none() {
        return replay(&mut tx, actor, idempotency_key.as_deref()).await;
    }
    let payload = json!({ "bulk_id": bulk_id });
    let job = NewJob {
        id: job_id,
        kind: JobKind::Bulk,
        order_id: None,
        bulk_id: Some(bulk_id),
        actor_id: actor.id,
        actor_role: actor.role,
        payload: &payload,
        idempotency_key: None,
        traceparent: Some(&traceparent),
    };
    jobs::insert(&mut tx, &job).await?;
    tx.commit().await?;

    let published = publisher
        .publish_bulk(
            &JobMessage::one(JobRef::new(job_id)),
            &actor,
            Some(&traceparent),
        )
        .await;
    publish_or_compensate(pool, "not_queued", published, async |conn, error| {
        bulk::abandon_unqueued(conn, bulk_id, error).await
    })
    .await?;
    ::metrics::counter!(crate::metrics::JOBS_ACCEPTED, "kind" => JobKind::Bulk.as_str())
        .increment(1);
    tracing::info!(%job_id, mode = %mode, "bulk queued");
    Ok(BulkSubmitted {
        bulk_id,
        job_id: Some(job_id),
        status: BulkStatus::Queued,
        repeat: false,
    })
}

/// The first bulk of a repeated idempotency key, as it is now.
async fn replay(
    conn: &mut PgConnection,
    actor: Actor,
    key: Option<&str>,
) -> Result<BulkSubmitted, ApiError> {
    let key = key.expect("only keyed inserts can conflict");
    let first = bulk::by_idempotency_key(conn, actor.id, key)
        .await?
        .ok_or(ApiError::NotFound("bulk"))?;
    Ok(BulkSubmitted {
        bulk_id: first.id,
        job_id: jobs::job_of_bulk(conn, first.id).await?,
        status: first.status,
        repeat: true,
    })
}

/// Record the end of a bulk on its job: the job's status follows the bulk's.
pub async fn settle(conn: &mut PgConnection, job: &Job, op: &BulkOp) -> sqlx::Result<()> {
    let finished = Finished {
        id: job.id,
        status: op.status.job_status(),
        result: Some(json!({ "bulk_id": op.id, "status": op.status })),
        error: op.error.clone(),
    };
    let changes = Changes {
        outcomes: &[finished],
        ..Changes::default()
    };
    changes::write(conn, &changes).await
}

/// A bulk that cannot be worked (a defect): it fails, and its job is dead with `why`.
pub async fn fail(conn: &mut PgConnection, job: &Job, why: &str) -> sqlx::Result<()> {
    let error = json!({ "code": "bulk_failed", "message": why });
    if let Some(bulk_id) = job.bulk_id {
        bulk::finish(conn, bulk_id, BulkStatus::Failed, Some(&error)).await?;
    }
    jobs::mark_dead(conn, job.id, &error).await
}
