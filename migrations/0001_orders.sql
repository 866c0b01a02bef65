-- orderflow schema: orders and their context, the append-only audit log, jobs and the outbox.
-- Statuses are text with check constraints (not enums) so that adding a status is one
-- migration that does not rewrite tables.

create table orders (
    id             uuid primary key,
    customer_id    uuid not null,
    status         text not null default 'pending'
        check (status in ('pending','confirmed','processing','shipped','delivered','cancelled','refunded')),
    payment_status text not null default 'unpaid'
        check (payment_status in ('unpaid','paid','refunded')),
    total_cents    bigint not null check (total_cents >= 0),
    currency       text not null check (currency ~ '^[A-Z]{3}$'),
    version        bigint not null default 1,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
create index orders_customer_idx on orders (customer_id, id);
create index orders_status_idx on orders (status, id);

create table order_items (
    order_id         uuid not null references orders (id) on delete cascade,
    line             int not null,
    sku              text not null,
    quantity         int not null check (quantity > 0),
    unit_price_cents bigint not null check (unit_price_cents >= 0),
    primary key (order_id, line)
);

-- A sku without a row here is not stock-tracked and always available.
create table inventory (
    sku        text primary key,
    on_hand    bigint not null check (on_hand >= 0),
    reserved   bigint not null default 0 check (reserved >= 0),
    updated_at timestamptz not null default now()
);

create table jobs (
    id              uuid primary key,
    kind            text not null check (kind in ('change_status','bulk')),
    order_id        uuid references orders (id),
    bulk_id         uuid,
    actor_id        uuid not null,
    actor_role      text not null,
    payload         jsonb not null,
    status          text not null default 'queued'
        check (status in ('queued','running','succeeded','rejected','retrying','dead','cancelled')),
    attempts        int not null default 0,
    result          jsonb,
    error           jsonb,
    idempotency_key text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create unique index jobs_idempotency_idx on jobs (actor_id, idempotency_key) where idempotency_key is not null;
create index jobs_status_idx on jobs (status, created_at);
create index jobs_order_idx on jobs (order_id);

create table order_status_history (
    id          bigserial primary key,
    order_id    uuid not null references orders (id),
    from_status text,
    to_status   text not null,
    action      text not null,
    actor_id    uuid not null,
    actor_role  text not null,
    reason      text,
    job_id      uuid,
    bulk_id     uuid,
    version     bigint not null,
    created_at  timestamptz not null default now()
);
create index history_order_idx on order_status_history (order_id, id);
create unique index history_job_idx on order_status_history (job_id) where job_id is not null and bulk_id is null;

-- The audit log is append-only. The retention job (and only it) sets
-- `orderflow.retention = 'on'` in its transaction to prune old rows.
create function history_append_only() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' and current_setting('orderflow.retention', true) = 'on' then
        return old;
    end if;
    raise exception 'order_status_history is append-only (% rejected)', tg_op
        using errcode = 'restrict_violation';
end $$;
create trigger history_append_only
    before update or delete on order_status_history
    for each row execute function history_append_only();
create trigger history_no_truncate
    before truncate on order_status_history
    for each statement execute function history_append_only();

-- Outbox: written in the same transaction as the change it announces. The relay gives each
-- row its `seq` (gap-free, publish order) before publishing; rows stay for the retention
-- window as the replay log for SSE and late consumers.
create table outbox (
    id           bigserial primary key,
    order_id     uuid,
    customer_id  uuid,
    event_type   text not null,
    routing_key  text not null,
    payload      jsonb not null,
    created_at   timestamptz not null default now(),
    seq          bigint unique,
    published_at timestamptz
);
create index outbox_unsequenced_idx on outbox (id) where seq is null;
create index outbox_unpublished_idx on outbox (seq) where seq is not null and published_at is null;

create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('orderflow_outbox', '');
    return null;
end $$;
create trigger outbox_notify
    after insert on outbox
    for each statement execute function outbox_notify();
