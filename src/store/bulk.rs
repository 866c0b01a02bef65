//! Bulk operations and their items (the snapshot of a selection, with each order's outcome).

use crate::domain::{BulkMode, BulkStatus, ItemOutcome, OrderStatus, PaymentStatus, Role};
use crate::store::orders::Order;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Which orders a bulk operation is about: explicit ids, or a filter.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ids: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub status: Option<Vec<OrderStatus>>,
    pub payment_status: Option<PaymentStatus>,
    pub customer_id: Option<Uuid>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub min_total_cents: Option<i64>,
    pub max_total_cents: Option<i64>,
}

/// Largest explicit id list a selection may carry.
pub const MAX_ORDER_IDS: usize = 1_000_000;

impl Selection {
    /// Exactly one of `order_ids` and `filter`, each well-formed; else why not.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.order_ids, &self.filter) {
            (Some(_), Some(_)) | (None, None) => {
                Err("a selection has exactly one of `order_ids` and `filter`".into())
            }
            (Some(ids), None) if ids.is_empty() || ids.len() > MAX_ORDER_IDS => {
                Err(format!("`order_ids` holds 1 to {MAX_ORDER_IDS} ids"))
            }
            (None, Some(f)) => {
                if f.status.as_ref().is_some_and(Vec::is_empty) {
                    return Err("`filter.status` must not be empty (omit it for any status)".into());
                }
                if let (Some(a), Some(b)) = (f.created_from, f.created_to) {
                    if a > b {
                        return Err("`created_from` is after `created_to`".into());
                    }
                }
                if let (Some(a), Some(b)) = (f.min_total_cents, f.max_total_cents) {
                    if a > b {
                        return Err("`min_total_cents` is above `max_total_cents`".into());
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

// The query macros take only string literals (joined by `+`), so a clause that several
// statements share cannot be a `const` spliced in at run time: each shared clause is a macro
// that runs `sqlx::$macro!` with the clause between a `$head` and a `$tail` literal, and every
// statement built from it is still checked against the schema at compile time.

/// `sqlx::$macro!` over `$head`, the `where` clause over `orders` that a selection stands
/// for, and `$tail`. The selection binds $1..$8 (each condition drops out when its
/// parameter is null: one static statement for every selection), `$arg`s bind from $9 on.
macro_rules! selection_query {
    ($macro:ident!($($record:ident,)? $head:literal, $tail:literal; $sel:expr $(, $arg:expr)* $(,)?)) => {{
        let sel: &Selection = $sel;
        let any = Filter::default();
        let f = sel.filter.as_ref().unwrap_or(&any);
        sqlx::$macro!(
            $($record,)?
            $head
                + " ($1::uuid[] is null or id = any($1))
                    and ($2::text[] is null or status = any($2))
                    and ($3::text is null or payment_status = $3)
                    and ($4::uuid is null or customer_id = $4)
                    and ($5::timestamptz is null or created_at >= $5)
                    and ($6::timestamptz is null or created_at < $6)
                    and ($7::bigint is null or total_cents >= $7)
                    and ($8::bigint is null or total_cents <= $8) "
                + $tail,
            sel.order_ids.as_deref(),
            f.status.as_deref() as Option<&[OrderStatus]>,
            f.payment_status.map(PaymentStatus::as_str),
            f.customer_id,
            f.created_from,
            f.created_to,
            f.min_total_cents,
            f.max_total_cents,
            $($arg),*
        )
    }};
}

/// One page of the selection in id order, after `after`.
pub async fn select_page(
    conn: &mut PgConnection,
    sel: &Selection,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Order>> {
    selection_query!(query_as!(
        Order,
        r#"select id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at
           from orders where"#,
        "and ($9::uuid is null or id > $9) order by id limit $10";
        sel,
        after,
        limit,
    ))
    .fetch_all(conn)
    .await
}

/// How many orders the selection matches now.
pub async fn count(conn: &mut PgConnection, sel: &Selection) -> sqlx::Result<i64> {
    selection_query!(query_scalar!(r#"select count(*) as "count!" from orders where"#, ""; sel))
        .fetch_one(conn)
        .await
}

/// Every id a bulk over `sel` works on, in id order: the orders a filter matches, or every
/// distinct id of an explicit list — ids without an order included, so that they are
/// reported (`not_found`) instead of silently dropped. [`snapshot`] takes the same ids.
pub async fn selected(conn: &mut PgConnection, sel: &Selection) -> sqlx::Result<Vec<Uuid>> {
    selection_query!(query_scalar!(
        "select id as \"id!\" from (select id from orders where $1::uuid[] is null and",
        "union all
         select distinct u.id from unnest($1::uuid[]) as u(id)) s
         order by id";
        sel
    ))
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone)]
pub struct BulkOp {
    pub id: Uuid,
    pub actor_id: Uuid,
    pub actor_role: Role,
    pub selection: Value,
    pub request: Value,
    pub mode: BulkMode,
    pub status: BulkStatus,
    pub cancel_requested: bool,
    pub total: i32,
    pub applied: i32,
    pub rejected: i32,
    pub failed: i32,
    pub skipped: i32,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl BulkOp {
    pub fn pending(&self) -> i32 {
        (self.total - self.applied - self.rejected - self.failed - self.skipped).max(0)
    }

    /// The public shape (API.md, Bulk), also the `bulk.progress` event's body.
    pub fn view(&self) -> Value {
        let view = BulkView {
            id: self.id,
            status: self.status,
            mode: self.mode,
            action: self
                .request
                .get("action")
                .or_else(|| self.request.get("to"))
                .cloned(),
            request: self.request.clone(),
            total: self.total,
            applied: self.applied,
            rejected: self.rejected,
            failed: self.failed,
            skipped: self.skipped,
            pending: self.pending(),
            cancel_requested: self.cancel_requested,
            error: self.error.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        };
        serde_json::to_value(view).expect("a bulk view serializes")
    }
}

/// A bulk operation as the API shows it (see [`BulkOp::view`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(description = "A bulk operation and its progress; also the `bulk.progress` event's data.")]
pub struct BulkView {
    pub id: Uuid,
    pub status: BulkStatus,
    pub mode: BulkMode,
    /// The action, or the target status, applied to every order.
    #[schema(value_type = Option<String>, required)]
    pub action: Option<Value>,
    /// The change as submitted: `action` or `to`, `reason`, `tracking_number`.
    #[schema(value_type = Object)]
    pub request: Value,
    pub total: i32,
    pub applied: i32,
    pub rejected: i32,
    pub failed: i32,
    pub skipped: i32,
    pub pending: i32,
    pub cancel_requested: bool,
    /// Why the bulk failed as a whole (`{code, message}`), if it did.
    #[schema(value_type = Option<Object>, required)]
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    #[schema(required)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required)]
    pub finished_at: Option<DateTime<Utc>>,
}

pub struct NewBulk<'a> {
    pub id: Uuid,
    pub actor_id: Uuid,
    pub actor_role: Role,
    pub selection: &'a Value,
    pub request: &'a Value,
    pub mode: BulkMode,
    pub idempotency_key: Option<&'a str>,
}

/// Insert a queued bulk; `None` if the actor already used this idempotency key.
pub async fn insert(conn: &mut PgConnection, b: &NewBulk<'_>) -> sqlx::Result<Option<BulkOp>> {
    sqlx::query_as!(
        BulkOp,
        r#"insert into bulk_operations (id, actor_id, actor_role, selection, request, mode, idempotency_key)
           values ($1, $2, $3, $4, $5, $6, $7)
           on conflict (actor_id, idempotency_key) where idempotency_key is not null do nothing
           returning id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                  status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                  skipped, error, created_at, started_at, finished_at"#,
        b.id,
        b.actor_id,
        b.actor_role.as_str(),
        b.selection,
        b.request,
        b.mode.as_str(),
        b.idempotency_key,
    )
    .fetch_optional(conn)
    .await
}

pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    actor_id: Uuid,
    key: &str,
) -> sqlx::Result<Option<BulkOp>> {
    sqlx::query_as!(
        BulkOp,
        r#"select id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                  status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                  skipped, error, created_at, started_at, finished_at
           from bulk_operations where actor_id = $1 and idempotency_key = $2"#,
        actor_id,
        key,
    )
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<BulkOp>> {
    sqlx::query_as!(
        BulkOp,
        r#"select id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                  status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                  skipped, error, created_at, started_at, finished_at
           from bulk_operations where id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Lock the bulk row for the rest of the transaction: its snapshot, its end and every
/// change to its counters are made under this lock.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<BulkOp>> {
    sqlx::query_as!(
        BulkOp,
        r#"select id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                  status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                  skipped, error, created_at, started_at, finished_at
           from bulk_operations where id = $1 for update"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Give up on a bulk whose publish was not confirmed (see [`super::jobs::abandon_unqueued`]):
/// it and its job become `cancelled`, the idempotency key is freed. False when a worker
/// already took it.
pub async fn abandon_unqueued(
    conn: &mut PgConnection,
    id: Uuid,
    error: &Value,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update jobs set status = 'cancelled', error = $2, updated_at = now() where bulk_id = $1 and status = 'queued'",
        id,
        error,
    )
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query!(
        "update bulk_operations set status = 'cancelled', error = $2, idempotency_key = null, finished_at = now(), updated_at = now()
         where id = $1 and status = 'queued'",
        id,
        error,
    )
    .execute(conn)
    .await?;
    Ok(true)
}

/// Snapshot the selection (id order) into chunks of `chunk_size` orders and start the
/// bulk. Returns the total.
pub async fn snapshot(
    conn: &mut PgConnection,
    id: Uuid,
    sel: &Selection,
    chunk_size: i64,
) -> sqlx::Result<i64> {
    let total = selection_query!(query_scalar!(
        r#"with selected as (
               select id, row_number() over (order by id) as position
               from (select id from orders where $1::uuid[] is null and"#,
        r#"union all
                     select distinct u.id from unnest($1::uuid[]) as u(id)) s),
           chunks as (
               insert into bulk_chunks (bulk_id, chunk, first_position, order_ids)
               select $9, (position - 1) / $10, min(position), array_agg(id order by position)
               from selected group by (position - 1) / $10
               returning cardinality(order_ids) as n)
           select coalesce(sum(n), 0)::bigint as "total!" from chunks"#;
        sel,
        id,
        chunk_size.max(1),
    ))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!(
        "update bulk_operations set status = 'running', total = $2, started_at = now(), updated_at = now()
         where id = $1",
        id,
        total as i32,
    )
    .execute(conn)
    .await?;
    Ok(total)
}

/// `sqlx::$macro!` over `$head`, the bulk `$id`'s items without an outcome yet (columns
/// `position`, `order_id`, in position order), and `$tail`: of every chunk not `done`
/// (`$chunk` None), or of that one chunk. An item has its outcome when it has a
/// `bulk_items` row or, if it was applied, its history row (see [`record`]). Binds $1 and
/// $2; `$arg`s bind from $3 on.
macro_rules! pending_items_query {
    ($macro:ident!($head:literal, $tail:literal; $id:expr, $chunk:expr $(, $arg:expr)* $(,)?)) => {
        sqlx::$macro!(
            $head
                + r#"
                select (c.first_position + o.i - 1)::int as position, o.id as order_id
                from bulk_chunks c
                cross join lateral unnest(c.order_ids) with ordinality as o(id, i)
                where c.bulk_id = $1 and not c.done and ($2::int is null or c.chunk = $2)
                  and not exists (select 1 from bulk_items b
                                  where b.bulk_id = $1 and b.position = c.first_position + o.i - 1)
                  and not exists (select 1 from order_status_history h
                                  where h.bulk_id = $1 and h.order_id = o.id)
                order by c.chunk, o.i "#
                + $tail,
            $id,
            $chunk,
            $($arg),*
        )
    };
}

/// The items without an outcome yet (see `pending_items_query!`) as (position, order): of
/// `chunk`, or of every chunk not done.
pub async fn pending_items(
    conn: &mut PgConnection,
    id: Uuid,
    chunk: Option<i32>,
) -> sqlx::Result<Vec<(i32, Uuid)>> {
    let rows = pending_items_query!(query!(
        r#"select position as "position!", order_id as "order_id!" from ("#,
        ") p";
        id,
        chunk,
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.position, r.order_id)).collect())
}

/// A chunk of the snapshot, and its items that have no outcome yet.
pub struct Chunk {
    pub chunk: i32,
    pub items: Vec<(i32, Uuid)>,
}

/// Claim the first chunk not `done` that no other transaction holds: its row stays locked
/// until this transaction ends, and [`record`] with `done` finishes it. Chunks whose items
/// all have outcomes (a worker died after recording the last of them) are marked done on
/// the way. None when no chunk is left to claim — every chunk may be done, or the rest are
/// being applied by other transactions.
///
/// A chunk's outcomes are recorded in the transaction that marks it done, so the items of
/// a chunk not done have no outcome yet — unless it is `partial`: its orders were being
/// applied one by one (see [`mark_partial`]), and only then are its items checked for
/// outcomes one by one.
pub async fn claim_chunk(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Chunk>> {
    loop {
        let row = sqlx::query!(
            "select chunk, first_position, partial, order_ids from bulk_chunks
             where bulk_id = $1 and not done order by chunk limit 1 for update skip locked",
            id,
        )
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let items: Vec<(i32, Uuid)> = if row.partial {
            pending_items(conn, id, Some(row.chunk)).await?
        } else {
            (row.first_position..).zip(row.order_ids).collect()
        };
        if !items.is_empty() {
            return Ok(Some(Chunk {
                chunk: row.chunk,
                items,
            }));
        }
        sqlx::query!(
            "update bulk_chunks set done = true where bulk_id = $1 and chunk = $2",
            id,
            row.chunk,
        )
        .execute(&mut *conn)
        .await?;
    }
}

/// Lock `chunk` for the rest of the transaction, waiting for whoever holds it. False when
/// it is done (or does not exist): nothing of it is left to apply.
pub async fn lock_chunk(conn: &mut PgConnection, id: Uuid, chunk: i32) -> sqlx::Result<bool> {
    let done = sqlx::query_scalar!(
        "select done from bulk_chunks where bulk_id = $1 and chunk = $2 for update",
        id,
        chunk,
    )
    .fetch_optional(conn)
    .await?;
    Ok(done == Some(false))
}

/// Whether the item at `position` (order `order_id`) has no outcome yet.
pub async fn item_pending(
    conn: &mut PgConnection,
    id: Uuid,
    position: i32,
    order_id: Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select not exists (select 1 from bulk_items where bulk_id = $1 and position = $2)
              and not exists (select 1 from order_status_history where bulk_id = $1 and order_id = $3)
              as "pending!""#,
        id,
        position,
        order_id,
    )
    .fetch_one(conn)
    .await
}

/// Lock every chunk of the bulk not done yet, waiting for those being applied: afterwards
/// no other transaction can apply one until this one ends. Returns how many there are.
pub async fn lock_chunks_left(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<i64> {
    let chunks = sqlx::query_scalar!(
        "select chunk from bulk_chunks where bulk_id = $1 and not done order by chunk for update",
        id,
    )
    .fetch_all(conn)
    .await?;
    Ok(chunks.len() as i64)
}

/// Mark `chunk` as being applied order by order: some of its items may have outcomes.
pub async fn mark_partial(conn: &mut PgConnection, id: Uuid, chunk: i32) -> sqlx::Result<()> {
    sqlx::query!(
        "update bulk_chunks set partial = true where bulk_id = $1 and chunk = $2 and not partial",
        id,
        chunk,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Every item without an outcome yet, in position order (an atomic bulk's whole selection).
pub async fn all_pending_items(
    conn: &mut PgConnection,
    id: Uuid,
) -> sqlx::Result<Vec<(i32, Uuid)>> {
    pending_items(conn, id, None).await
}

/// The code of an item whose id (in an explicit selection) has no order.
pub const NOT_FOUND: &str = "not_found";

/// One item's outcome, as recorded.
#[derive(Debug, Clone)]
pub struct ItemRecord {
    pub position: i32,
    pub order_id: Uuid,
    pub outcome: ItemOutcome,
    pub code: Option<String>,
    pub from: Option<OrderStatus>,
    pub to: Option<OrderStatus>,
}

/// Record outcomes set-wise and add them to the bulk's counters; with `done`, that chunk
/// is finished: it is not claimed again. Returns the updated bulk.
///
/// The counters' update locks the bulk's row until the transaction ends: chunks applied
/// at once commit their counters (and the progress event written after them) one after
/// the other, so each progress event counts every chunk committed before it.
///
/// Only outcomes other than `applied` get a `bulk_items` row: an applied item's record is
/// the history row its change wrote in the same transaction (unique per bulk and order,
/// with the statuses it moved between). A bulk that applies everything writes no items.
pub async fn record(
    conn: &mut PgConnection,
    id: Uuid,
    items: &[ItemRecord],
    done: Option<i32>,
) -> sqlx::Result<BulkOp> {
    let rows: Vec<&ItemRecord> = items
        .iter()
        .filter(|i| i.outcome != ItemOutcome::Applied)
        .collect();
    if !rows.is_empty() {
        fn col<'a, T>(rows: &[&'a ItemRecord], f: impl Fn(&'a ItemRecord) -> T) -> Vec<T> {
            rows.iter().map(|&r| f(r)).collect()
        }
        sqlx::query!(
            "insert into bulk_items (bulk_id, position, order_id, outcome, code, from_status, to_status)
             select $1, * from unnest($2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[])",
            id,
            &col(&rows, |i| i.position),
            &col(&rows, |i| i.order_id),
            &col(&rows, |i| i.outcome) as &[ItemOutcome],
            &col(&rows, |i| i.code.as_deref()) as &[Option<&str>],
            &col(&rows, |i| i.from) as &[Option<OrderStatus>],
            &col(&rows, |i| i.to) as &[Option<OrderStatus>],
        )
        .execute(&mut *conn)
        .await?;
    }
    if let Some(chunk) = done {
        sqlx::query!(
            "update bulk_chunks set done = true where bulk_id = $1 and chunk = $2",
            id,
            chunk,
        )
        .execute(&mut *conn)
        .await?;
    }
    let count = |o: ItemOutcome| items.iter().filter(|i| i.outcome == o).count() as i32;
    sqlx::query_as!(
        BulkOp,
        r#"update bulk_operations set applied = applied + $2, rejected = rejected + $3, failed = failed + $4,
                  skipped = skipped + $5, updated_at = now()
           where id = $1
           returning id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                     status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                     skipped, error, created_at, started_at, finished_at"#,
        id,
        count(ItemOutcome::Applied),
        count(ItemOutcome::Rejected),
        count(ItemOutcome::Failed),
        count(ItemOutcome::Skipped),
    )
    .fetch_one(conn)
    .await
}

/// Record every item still without an outcome as `skipped` with `code`; returns the
/// updated bulk.
pub async fn skip_pending(conn: &mut PgConnection, id: Uuid, code: &str) -> sqlx::Result<BulkOp> {
    let n = pending_items_query!(query!(
        "insert into bulk_items (bulk_id, position, order_id, outcome, code)
         select $1, p.position, p.order_id, 'skipped', $3 from (",
        ") p";
        id,
        None::<i32>,
        code,
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected() as i32;
    sqlx::query_as!(
        BulkOp,
        r#"update bulk_operations set skipped = skipped + $2, updated_at = now() where id = $1
           returning id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                     status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                     skipped, error, created_at, started_at, finished_at"#,
        id,
        n,
    )
    .fetch_one(conn)
    .await
}

/// Set a terminal status; returns the updated bulk. A finished bulk has no chunk left to
/// claim: any chunk not done (an atomic bulk's, whose items were all recorded at once) is
/// marked done.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    status: BulkStatus,
    error: Option<&Value>,
) -> sqlx::Result<BulkOp> {
    sqlx::query!(
        "update bulk_chunks set done = true where bulk_id = $1 and not done",
        id,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_as!(
        BulkOp,
        r#"update bulk_operations set status = $2, error = coalesce($3, error), finished_at = now(), updated_at = now()
           where id = $1
           returning id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                     status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                     skipped, error, created_at, started_at, finished_at"#,
        id,
        status.as_str(),
        error,
    )
    .fetch_one(conn)
    .await
}

/// Ask a bulk to stop. A queued bulk is cancelled at once; a running one stops between
/// chunks. Returns the bulk as it is now, or None if there is no such bulk.
pub async fn request_cancel(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<BulkOp>> {
    sqlx::query_as!(
        BulkOp,
        r#"update bulk_operations set
              cancel_requested = cancel_requested or status in ('queued', 'running'),
              status = case when status = 'queued' then 'cancelled' else status end,
              finished_at = case when status = 'queued' then now() else finished_at end,
              updated_at = now()
           where id = $1
           returning id, actor_id, actor_role as "actor_role: Role", selection, request, mode as "mode: BulkMode",
                     status as "status: BulkStatus", cancel_requested, total, applied, rejected, failed,
                     skipped, error, created_at, started_at, finished_at"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// One exported row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultRow {
    pub order_id: Uuid,
    pub outcome: Option<ItemOutcome>,
    pub code: Option<String>,
    pub from: Option<OrderStatus>,
    pub to: Option<OrderStatus>,
}

/// Every item of a bulk in position order (those not done yet without an outcome), as a
/// stream: exports need not fit in memory.
pub fn results<'c>(conn: &'c mut PgConnection, id: Uuid) -> BoxStream<'c, sqlx::Result<ResultRow>> {
    sqlx::query_as!(
        ResultRow,
        r#"select o.id as "order_id!",
                  coalesce(b.outcome, case when h.order_id is not null then 'applied' end)
                      as "outcome?: ItemOutcome",
                  b.code as "code?",
                  coalesce(b.from_status, h.from_status) as "from?: OrderStatus",
                  coalesce(b.to_status, h.to_status) as "to?: OrderStatus"
           from bulk_chunks c
           cross join lateral unnest(c.order_ids) with ordinality as o(id, i)
           left join bulk_items b on b.bulk_id = c.bulk_id and b.position = c.first_position + o.i - 1
           left join order_status_history h on h.bulk_id = c.bulk_id and h.order_id = o.id
           where c.bulk_id = $1 order by c.chunk, o.i"#,
        id,
    )
    .fetch(conn)
}
