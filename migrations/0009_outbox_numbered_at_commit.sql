-- Events are numbered by the transaction that writes them, not afterwards by the relay.
--
-- The relay used to give each committed row its `seq` with an UPDATE: a second version of
-- every event (payload and all, a new entry in two indexes, a dead tuple for vacuum) and a
-- commit of its own before anything could be published: 14–17 µs and 1.4 KB of WAL per
-- row in SQL alone. Now a writer takes the next seqs from `outbox_head` in its insert
-- (`store::changes::write`). The head row stays locked until the writer commits, so seqs
-- become visible in order and without gaps (a rollback hands its numbers to the next
-- writer), and the relay only reads: what is after the published cursor, in seq order.
--
-- Upgrading: processes of an earlier build insert events without a seq, which this schema
-- refuses (their transactions roll back and their jobs are retried); run the new build's
-- workers, ingresses and relay once this is applied.

create table outbox_head (
    only_row boolean primary key default true check (only_row),
    -- The highest seq any committed event has.
    last_seq bigint  not null
);

-- Carry over: what an earlier relay had not numbered yet is numbered now, in id order
-- (its order), after everything numbered or published so far.
with base as (
         select greatest(coalesce((select max(seq) from outbox), 0),
                         (select published_seq from outbox_cursor)) as seq),
     numbered as (
         select id, row_number() over (order by id) as ord from outbox where seq is null)
update outbox o set seq = base.seq + n.ord
from numbered n, base
where o.id = n.id;

insert into outbox_head (last_seq)
select greatest(coalesce((select max(seq) from outbox), 0),
                (select published_seq from outbox_cursor));

drop index outbox_unsequenced_idx;
drop index outbox_seq_idx;
alter table outbox alter column seq set not null;
create unique index outbox_seq_idx on outbox (seq);
