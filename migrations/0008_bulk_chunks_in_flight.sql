-- Several chunks of one bulk may be applied at once (BULK_CHUNKS_IN_FLIGHT). A chunk is
-- claimed by locking its row (`for update skip locked`) and marked `done` in the
-- transaction that records its outcomes, instead of the bulk's `next_chunk` moving past
-- one chunk at a time.

alter table bulk_chunks add column done boolean not null default false;

update bulk_chunks c set done = true
from bulk_operations op
where op.id = c.bulk_id and (c.chunk < op.next_chunk or op.status not in ('queued', 'running'));

alter table bulk_operations drop column next_chunk;
