//! # wsguard
//!
//! Tower middleware that makes any axum WebSocket route safe to put on the internet.
//!
//! A WebSocket handshake is an HTTP request, so it can be guarded by tower layers before the
//! upgrade happens. wsguard supplies those layers, one per concern, and they compose in one
//! order that keeps the data path easy to see:
//!
//! ```text
//! request → origin → client IP → rate → auth → quota → socket policy → guarded socket
//! ```
//!
//! - [`origin`]: refuses cross-site WebSocket hijacking by checking the `Origin` header.
//!
//! Every rejection is an ordinary HTTP response with a precise status code, a short plain-text
//! body and the typed error in the response extensions, so the layers never change the
//! service's error type.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod auth;
pub mod client_ip;
pub mod origin;
pub mod rate_limit;
pub mod socket;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
