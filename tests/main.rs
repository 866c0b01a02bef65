//! The end-to-end suite: the real binaries against real PostgreSQL and RabbitMQ, observed
//! from outside over HTTP, AMQP and SSE. One test binary (`cargo test --test integration
//! [filter]`): the [`harness`] is compiled and linked once, and every item of it is used by
//! some test below. Each module is one guarantee or feature. Tests run in parallel, each in
//! its own sandbox; the fault suite, which stops RabbitMQ, holds the broker alone.

mod harness;

mod authentication;
mod bulk;
mod dead_letters;
mod exactly_once;
mod faults;
mod hostile_input;
mod pagination;
mod pipeline;
mod rate_limits;
mod rejections;
mod sse_resume;
mod state_machine;
mod visibility;
