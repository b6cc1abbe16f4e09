//! Cross-cutting HTTP behaviour the host applies to every route: [`cors`] and
//! [`rate_limit`]. Both are plain values consulted by `pipeline::handle`, the one place
//! the request path is composed.

pub mod cors;
pub mod rate_limit;
