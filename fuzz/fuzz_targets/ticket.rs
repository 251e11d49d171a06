//! Signed tickets: `TicketVerifier::verify` and `check` on arbitrary strings (never
//! accepted: nobody here holds a forging key), and the round trip: a ticket issued for an
//! arbitrary subject and claims verifies to them, until its expiry (a fuzz-chosen clock);
//! once when one-time; and any single changed character, any cut and any addition makes it
//! refused.
#![no_main]

use std::{
    num::NonZeroUsize,
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use wsguard::auth::{AuthError, TicketIssuer, TicketKey, TicketVerifier};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    garbage: &'a str,
    subject: String,
    claims: Vec<(String, String)>,
    /// Seconds past the issue time at which the ticket is verified.
    late: u8,
    /// Where a character is changed, and how (a flip of one of its low seven bits).
    at: u16,
    bit: u8,
    /// Where the ticket is cut, and what is added at the end.
    cut: u16,
    tail: &'a str,
}

/// When the tickets are issued.
const ISSUED: u64 = 1_800_000_000;
const TTL: u64 = 60;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn key(id: &str, fill: u8) -> TicketKey {
    TicketKey::new(id, [fill; 32]).expect("a valid key")
}

static ISSUER: LazyLock<TicketIssuer> = LazyLock::new(|| {
    TicketIssuer::new(key("k1", 7))
        .ttl(Duration::from_secs(TTL))
        .clock(|| at(ISSUED))
});

/// Holds the issuer's key and another one, as during a rotation.
fn verifier(now: u64) -> TicketVerifier {
    TicketVerifier::new(key("k2", 9))
        .key(key("k1", 7))
        .clock(move || at(now))
}

static VERIFIER: LazyLock<TicketVerifier> = LazyLock::new(|| verifier(ISSUED));

fn refused(verifier: &TicketVerifier, token: &str, what: &str) {
    let got = verifier.verify(token);
    assert!(
        matches!(got, Err(AuthError::Malformed | AuthError::Invalid)),
        "{what} {token:?}: {got:?}"
    );
    assert!(
        verifier.check(token).is_err(),
        "{what} {token:?} passed check"
    );
}

fuzz_target!(|input: Input<'_>| {
    refused(&VERIFIER, input.garbage, "garbage");

    let claims: Map<String, Value> = input
        .claims
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let ticket = ISSUER.issue_with_claims(&input.subject, claims.clone());

    // The round trip, until the expiry.
    let late = u64::from(input.late);
    match verifier(ISSUED + late).verify(&ticket) {
        Ok(verified) => {
            assert!(
                late < TTL,
                "accepted {late} s after issue, past the {TTL} s TTL"
            );
            assert_eq!(verified.subject(), input.subject);
            assert_eq!(verified.claims(), &claims);
            assert_eq!(verified.key_id(), "k1");
            assert_eq!(verified.expires_at(), at(ISSUED + TTL));
        }
        Err(error) => {
            assert!(late >= TTL, "refused {late} s after issue: {error:?}");
            assert_eq!(error, AuthError::Expired);
        }
    }

    // One time means once.
    let once = verifier(ISSUED).one_time(NonZeroUsize::new(4).expect("non-zero"));
    assert!(once.check(&ticket).is_ok());
    assert!(once.verify(&ticket).is_ok());
    assert_eq!(once.verify(&ticket).err(), Some(AuthError::Invalid));
    assert!(once.check(&ticket).is_err());

    // Tampering: one changed character, a cut, an addition.
    let bytes = ticket.as_bytes();
    let i = usize::from(input.at) % bytes.len();
    let mut changed = bytes.to_vec();
    changed[i] ^= 1 << (input.bit % 7);
    let changed = String::from_utf8(changed).expect("ASCII stays ASCII");
    refused(&VERIFIER, &changed, &format!("changed at {i}:"));

    let cut = usize::from(input.cut) % bytes.len();
    refused(&VERIFIER, &ticket[..cut], "cut");
    if !input.tail.is_empty() {
        refused(&VERIFIER, &format!("{ticket}{}", input.tail), "extended");
    }
});
