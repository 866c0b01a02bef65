//! What every HTTP role shares: the one error type in the contract's shape, the
//! extractors (body, path, query, headers, the caller) whose rejections use it, and the
//! listener that serves a router (`serve`). Below `ingress` and `sse`; it knows nothing
//! of their routes.

pub mod error;
pub mod extract;
pub mod headers;
pub mod openapi;
pub mod serve;

pub use error::ApiError;
