//! The revocation listener: a [`Subscription`] to the fleet's revocation channel that applies
//! each message to this instance's registry, and reconciles what it missed while it was not
//! subscribed.

use super::{
    registry::get_each,
    subscription::{Subscription, SubscriptionEvent},
    *,
};

/// A fingerprint from its 64 hex digits.
fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
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
