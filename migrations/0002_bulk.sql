-- Bulk operations: one row per request, one item per selected order. Items are the
-- snapshot of the selection taken when the bulk starts; each item's outcome is written in
-- the same transaction as its order's change, so a resumed bulk never applies one twice.

create table bulk_operations (
    id              uuid primary key,
    actor_id        uuid not null,
    actor_role      text not null,
    selection       jsonb not null,
    request         jsonb not null,
    mode            text not null check (mode in ('best_effort', 'atomic')),
    status          text not null default 'queued'
        check (status in ('queued', 'running', 'completed', 'rejected', 'cancelled', 'failed')),
    cancel_requested boolean not null default false,
    total           int not null default 0,
    applied         int not null default 0,
    rejected        int not null default 0,
    failed          int not null default 0,
    skipped         int not null default 0,
    error           jsonb,
    idempotency_key text,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz not null default now()
);
create unique index bulk_idempotency_idx on bulk_operations (actor_id, idempotency_key) where idempotency_key is not null;

create table bulk_items (
    bulk_id     uuid not null references bulk_operations (id) on delete cascade,
    position    int not null,
    order_id    uuid not null,
    outcome     text check (outcome in ('applied', 'rejected', 'failed', 'skipped')),
    code        text,
    from_status text,
    to_status   text,
    primary key (bulk_id, position)
);
create index bulk_items_pending_idx on bulk_items (bulk_id, position) where outcome is null;

alter table jobs add constraint jobs_bulk_fk foreign key (bulk_id) references bulk_operations (id);

-- One history row per (bulk, order): a resumed bulk cannot apply an order twice.
create unique index history_bulk_idx on order_status_history (bulk_id, order_id) where bulk_id is not null;
create index orders_created_idx on orders (created_at, id);

-- Stock reservations are recorded per order line, so releasing or shipping moves exactly
-- what `confirm` reserved (a sku that became tracked after the order was confirmed holds
-- no reservation for it), and stock can never be reserved beyond what is on hand.
alter table order_items add column reserved int not null default 0
    check (reserved >= 0 and reserved <= quantity);
alter table inventory add constraint inventory_reserved_within_on_hand check (reserved <= on_hand);
