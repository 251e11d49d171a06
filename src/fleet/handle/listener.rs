//! The revocation listener: a [`Subscription`] to the fleet's revocation channel that applies
//! each message to this instance's registry, and reconciles what it missed while it was not
//! subscribed.

use super::{
    registry::get_each,
    subscription::{Subscription, SubscriptionEvent},
    *,
};

/// A fingerprint from its 64 hex digits (and nothing else: `u8::from_str_radix` alone would
/// take `+f` for 0x0f).
fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Applies one revocation message to this instance's registry: `tok:<hex fingerprint>`,
/// `before:<ms since the epoch>:<subject>`, or (from earlier versions) `sub:<subject>`.
fn apply(local: &Local, message: &str) {
    if let Some(hex) = message.strip_prefix("tok:") {
        if let Some(fp) = parse_hex(hex) {
            local.revoke_token(fp);
        }
    } else if let Some(rest) = message.strip_prefix("before:") {
        if let Some((ms, subject)) = rest.split_once(':')
            && let Ok(ms) = ms.parse::<u64>()
            && !subject.is_empty()
            && let Some(before) = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
        {
            local.revoke_before(subject, before);
        }
    } else if let Some(subject) = message.strip_prefix("sub:")
        && !subject.is_empty()
    {
        local.revoke_before(subject, SystemTime::now());
    }
}

/// Applies the revocations of the fleet's channel for the life of the fleet: each message as
/// it comes, and on every (re)subscription the markers of what it may have missed.
pub(super) async fn listen(
    mut subscription: Subscription,
    client: Client,
    prefix: String,
    local: Arc<Local>,
) {
    while let Some(event) = subscription.recv().await {
        match event {
            SubscriptionEvent::Subscribed => {
                // Revocations published while this listener was not subscribed: close the
                // sockets whose token or subject carries a revocation marker.
                if let Err(e) = reconcile(&client, &prefix, &local).await {
                    tracing::debug!(
                        name: "wsguard.fleet.listener_error",
                        target: "wsguard::fleet",
                        channel = subscription.channel(),
                        error = %e,
                        "revocation listener could not catch up; resubscribing"
                    );
                    subscription.resubscribe();
                }
            }
            SubscriptionEvent::Message(text) => apply(&local, &text),
        }
    }
}

/// Applies the revocation markers of the live sockets' tokens and subjects (in pipelines of
/// 256 `GET`s: the markers are in different Redis Cluster slots, so no `MGET`).
async fn reconcile(client: &Client, prefix: &str, local: &Local) -> RedisResult<()> {
    let (subjects, tokens) = local.live_keys();
    if subjects.is_empty() && tokens.is_empty() {
        return Ok(());
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    for chunk in tokens.chunks(256) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|fp| format!("{prefix}:revoked:{}", hex(fp)))
            .collect();
        let marks: Vec<Option<String>> = get_each(&keys).query_async(&mut conn).await?;
        for (fp, mark) in chunk.iter().zip(marks) {
            if mark.is_some() {
                local.revoke_token(*fp);
            }
        }
    }
    for chunk in subjects.chunks(256) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|s| format!("{prefix}:revoked_sub:{s}"))
            .collect();
        let marks: Vec<Option<String>> = get_each(&keys).query_async(&mut conn).await?;
        for (subject, mark) in chunk.iter().zip(marks) {
            if let Some(ms) = mark.and_then(|m| m.parse::<u64>().ok())
                && let Some(before) = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
            {
                local.revoke_before(subject, before);
            }
        }
    }
    Ok(())
}

fn hex(fp: &[u8; 32]) -> String {
    use std::fmt::Write;
    fp.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::{super::registry::epoch_millis_ceil, *};

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Hex decoding written out: exactly 64 hex digits, two per byte.
        fn reference_hex(text: &str) -> Option<[u8; 32]> {
            let bytes = text.as_bytes();
            if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = digit(bytes[2 * i]) * 16 + digit(bytes[2 * i + 1]);
            }
            Some(out)
        }

        proptest! {
            /// A fingerprint is read from exactly 64 hex digits, in either case, and from
            /// nothing else (no sign, no space, no other length).
            #[test]
            fn fingerprints_are_read_from_hex_only(
                text in prop_oneof![
                    "[0-9a-fA-F]{64}",
                    "[0-9a-f+ -]{62,66}",
                    "([0-9a-f]{2}|[+][0-9a-f]){32}",
                    "\\PC{0,70}",
                ],
            ) {
                prop_assert_eq!(parse_hex(&text), reference_hex(&text), "{:?}", text);
            }

            /// Any message on the revocation channel is applied or ignored, never a panic;
            /// a subject is revoked only by a well-formed message naming it.
            #[test]
            fn any_revocation_message_is_applied_or_ignored(
                message in prop_oneof![
                    "\\PC{0,80}",
                    "(tok|before|sub):\\PC{0,70}",
                    "before:[0-9+-]{0,22}:(alice|bob|)",
                    "tok:[0-9a-fA-F+]{60,68}",
                ],
            ) {
                let r = crate::revoke::Revocations::new();
                apply(r.local(), &message);
                let alice = Principal::new("alice", None);
                let names_alice = message == "sub:alice"
                    || message
                        .strip_prefix("before:")
                        .and_then(|rest| rest.split_once(':'))
                        .is_some_and(|(ms, subject)| subject == "alice" && ms.parse::<u64>().is_ok());
                prop_assert_eq!(r.is_revoked(&alice, None), names_alice, "{:?}", message);
            }
        }

        /// Found by `fingerprints_are_read_from_hex_only`: `u8::from_str_radix` takes a
        /// leading `+`, so `+f` was read as the byte 0x0f.
        #[test]
        fn a_signed_digit_is_no_hex() {
            assert_eq!(parse_hex(&"+f".repeat(32)), None);
            assert_eq!(parse_hex(&"0f".repeat(32)), Some([0x0f; 32]));
        }
    }

    #[tokio::test]
    async fn revocation_messages_reach_the_matching_sockets_only() {
        use crate::auth::Principal;
        let r = crate::revoke::Revocations::new();
        let local = r.local();
        let fp = TokenFingerprint::of("t1");
        let (signals, _permits) = crate::revoke::test_register(
            local,
            &[
                (
                    Principal::new("alice", None)
                        .with_issued_at(UNIX_EPOCH + Duration::from_millis(5_000)),
                    "a1",
                ),
                (Principal::new("bob", None), "b1"),
                (
                    Principal::new("carol", None)
                        .with_issued_at(UNIX_EPOCH + Duration::from_secs(9_000)),
                    "t1",
                ),
            ],
        );
        let [alice, bob, carol] = &signals[..] else {
            panic!("three signals");
        };
        apply(local, "before:5001:alice");
        assert!(alice.is_revoked() && !bob.is_revoked() && !carol.is_revoked());
        apply(local, &format!("tok:{}", fp.to_hex()));
        assert!(carol.is_revoked() && !bob.is_revoked());
        for garbage in [
            "garbage",
            "sub:",
            "tok:zz",
            "before:x:bob",
            "before:1:",
            "tok:",
        ] {
            apply(local, garbage);
        }
        assert!(!bob.is_revoked());
        apply(local, "sub:bob");
        assert!(
            bob.is_revoked(),
            "the message of earlier versions still works"
        );
        assert_eq!(parse_hex(&fp.to_hex()), Some(*fp.as_bytes()));
        assert_eq!(hex(fp.as_bytes()), fp.to_hex());
        assert_eq!(
            epoch_millis_ceil(UNIX_EPOCH + Duration::from_micros(1_500)),
            2
        );
        assert_eq!(epoch_millis_ceil(UNIX_EPOCH + Duration::from_millis(7)), 7);
    }
}
