//! The real client address of a request.

use std::net::IpAddr;

/// The client address that every later layer and handler keys on, stored in the request
/// extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);
