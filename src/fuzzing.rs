//! Crate-private parsers, reachable by the fuzz targets in `fuzz/` only: this module exists
//! when the crate is built with `--cfg fuzzing` (as `cargo fuzz` builds it) and is no part of
//! the API. Each item forwards to the crate's own function, unchanged.

/// The decision of the fleet's GCRA script reply (`gcra_decision` in `fleet/rate.rs`):
/// `Ok(Ok(remaining))`, `Ok(Err(wait))`, or an error for a reply outside the contract.
#[cfg(feature = "redis")]
pub fn gcra_decision(reply: redis::Value) -> redis::RedisResult<Result<u64, std::time::Duration>> {
    crate::fleet::rate::gcra_decision(reply)
}

/// The decision of the fleet's quota acquire script reply (`acquire_decision` in
/// `fleet/quota.rs`) for the capped `sets` (key, cap, the error naming the set when full).
#[cfg(feature = "redis")]
pub fn acquire_decision(
    reply: redis::Value,
    sets: &[(String, usize, crate::rate_limit::RateLimitError)],
) -> redis::RedisResult<Option<crate::rate_limit::RateLimitError>> {
    crate::fleet::quota::acquire_decision(reply, sets)
}

/// Whether the reply of the fleet's revocation check revokes (`revocation_decision` in
/// `fleet/handle/registry.rs`): the token marker was asked for when `token`, the subject's
/// cutoff when `principal` is given.
#[cfg(feature = "redis")]
pub fn revocation_decision(
    reply: redis::Value,
    principal: Option<&crate::auth::Principal>,
    token: bool,
) -> redis::RedisResult<bool> {
    crate::fleet::revocation_decision(reply, principal, token)
}
