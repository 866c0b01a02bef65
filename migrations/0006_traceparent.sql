-- W3C trace context, carried from the request that caused a change to the events it
-- produced: the job row keeps the request's `traceparent` (workers read it with the job),
-- the outbox row keeps it for the relay to publish as the event's `traceparent` header.
alter table jobs add column traceparent text;
alter table outbox add column traceparent text;
