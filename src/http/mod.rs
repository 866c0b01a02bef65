//! What every HTTP role shares: the one error type in the contract's shape, and the
//! extractors (body, path, query, headers, the caller) whose rejections use it. Below
//! `ingress` and `sse`; it knows nothing of their routes.

pub mod error;
pub mod extract;
pub mod headers;
pub mod openapi;

pub use error::ApiError;
