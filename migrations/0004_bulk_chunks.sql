-- A bulk's snapshot is stored as chunks of order ids (one row per chunk) instead of one
-- row per selected order written at snapshot and rewritten with its outcome (a
-- 100,000-order bulk wrote 200,000 row versions for its items). An item's outcome is
-- written when it is known, in the transaction of its chunk: an applied order's record is
-- its history row (unique per bulk and order); every other outcome (rejected, failed,
-- skipped) is a `bulk_items` row. `next_chunk` is where the bulk resumes; items of that
-- chunk that already have their outcome are not applied again.

create table bulk_chunks (
    bulk_id        uuid not null references bulk_operations (id) on delete cascade,
    chunk          int not null,
    first_position int not null,
    order_ids      uuid[] not null,
    -- Being applied order by order (after a failed chunk): some items may have outcomes.
    partial        boolean not null default false,
    primary key (bulk_id, chunk)
);

alter table bulk_operations add column next_chunk int not null default 0;

-- Carry over: each existing bulk's items become its one chunk; only outcomes other than
-- `applied` stay items (applied ones have their history row).
insert into bulk_chunks (bulk_id, chunk, first_position, order_ids, partial)
select bulk_id, 0, min(position), array_agg(order_id order by position), true
from bulk_items group by bulk_id;
delete from bulk_items where outcome is null or outcome = 'applied';
drop index bulk_items_pending_idx;
alter table bulk_items alter column outcome set not null;
