-- A job's foreign key to its order cost the intake a row lock on every order it queued a
-- change for (`FOR KEY SHARE`, checked per row after the insert), and that lock waits for
-- a worker's `FOR UPDATE` on the same order: while a worker batch — or a bulk chunk of
-- 2,000 orders — held an order, the intake's one writer stopped, and with it every
-- submission. Measured (`EXPLAIN ANALYZE` of the group insert, nine jobs): the check was
-- 0.35 of 1.15 ms. The insert only queues jobs for orders it has just read in the same
-- statement (`jobs::insert_for_orders`), bulk jobs have no order, and orders are never
-- deleted — the same grounds on which the audit log's key went (0003).
alter table jobs drop constraint jobs_order_id_fkey;
