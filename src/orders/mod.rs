//! The application layer: orderflow's use cases, between the domain and the adapters
//! (HTTP handlers in `ingress`, queue consumers in `worker`). Each use case is written
//! once here — a change parsed into one [`ChangeCommand`], the one apply path
//! ([`apply::Batch`]), idempotent submission and publish-or-compensate ([`submit`], its
//! job rows group-committed by [`intake`]),
//! creation ([`create`]), bulk preview, submission and steps ([`bulk`]), redriving and
//! discarding dead jobs ([`dead`]), the operations snapshot ([`overview`]) — and the
//! adapters only extract, call and render.

pub mod apply;
pub mod bulk;
pub mod command;
pub mod create;
pub mod dead;
pub mod intake;
pub mod overview;
pub mod read;
pub mod submit;

pub use command::ChangeCommand;
