//! The replies of the fleet's Lua scripts (any `redis::Value` tree, depth-bounded) through
//! the pure functions that turn them into decisions: the GCRA rate limit, the quota acquire
//! and the revocation check (`wsguard::fuzzing`, built with `--cfg fuzzing` only). Checks:
//! no panic; a reply within the script's contract gives the model's decision; any other is
//! an `UnexpectedReturnType` error (reported as `FleetError::Redis`), never a decision.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use redis::{PushKind, Value, VerbatimFormat};
use wsguard::{auth::Principal, fleet::RateLimitError, fuzzing};

const MAX_DEPTH: u32 = 3;

/// Any reply a Redis connection can hand over, nested up to `depth` more levels.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let leaves = 11;
    let kinds = if depth == 0 { leaves } else { leaves + 5 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Nil,
        1 => Value::Okay,
        2 => Value::Int(u.arbitrary()?),
        3 => Value::Int(u.int_in_range(-3..=8)?),
        4 => Value::BulkString(u.arbitrary()?),
        5 => Value::BulkString(u.arbitrary::<u64>()?.to_string().into_bytes()),
        6 => Value::SimpleString(u.arbitrary()?),
        7 => Value::Double(u.arbitrary()?),
        8 => Value::Boolean(u.arbitrary()?),
        9 => Value::VerbatimString {
            format: VerbatimFormat::Text,
            text: u.arbitrary()?,
        },
        10 => Value::BulkString(
            u.int_in_range(0u64..=4_000_000_000_000)?
                .to_string()
                .into_bytes(),
        ),
        11 => Value::Array(values(u, depth - 1)?),
        12 => Value::Set(values(u, depth - 1)?),
        13 => Value::Map(
            values(u, depth - 1)?
                .into_iter()
                .zip(values(u, depth - 1)?)
                .collect(),
        ),
        14 => Value::Attribute {
            data: Box::new(value(u, depth - 1)?),
            attributes: Vec::new(),
        },
        _ => Value::Push {
            kind: PushKind::Message,
            data: values(u, depth - 1)?,
        },
    })
}

fn values(u: &mut Unstructured<'_>, depth: u32) -> Result<Vec<Value>> {
    let n = u.int_in_range(0..=3)?;
    (0..n).map(|_| value(u, depth)).collect()
}

/// The reply: any, or one of the shape the script promises (so its values get explored).
fn reply(
    u: &mut Unstructured<'_>,
    shaped: impl FnOnce(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<Value> {
    if u.arbitrary()? {
        shaped(u)
    } else {
        value(u, MAX_DEPTH)
    }
}

/// The integer a reply stands for under the scripts' contract: an integer reply (what Redis
/// makes of a Lua number), not a string or a double that looks like one.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn assert_unexpected<T: std::fmt::Debug>(got: &redis::RedisResult<T>, reply: &Value) {
    assert!(
        got.as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::UnexpectedReturnType
                && !e.is_unrecoverable_error()),
        "{reply:?} gave {got:?}"
    );
}

fn sets(n: usize) -> Vec<(String, usize, RateLimitError)> {
    (0..n)
        .map(|i| {
            (
                format!("set{i}"),
                i + 1,
                RateLimitError::GlobalQuota {
                    limit: i + 1,
                    retry_after: Duration::from_secs(1),
                },
            )
        })
        .collect()
}

fn gcra(u: &mut Unstructured<'_>) -> Result<()> {
    let reply = reply(u, |u| {
        let allowed = u.int_in_range(-2..=3)?;
        Ok(Value::Array(vec![
            Value::Int(allowed),
            Value::Int(u.arbitrary()?),
        ]))
    })?;
    let contract = match &reply {
        Value::Array(items) if items.len() == 2 => int(&items[0]).zip(int(&items[1])),
        _ => None,
    };
    let got = fuzzing::gcra_decision(reply.clone());
    match contract {
        // `{1, remaining}` allows, `{0, wait_us}` refuses (negatives count as 0).
        Some((1, n)) => assert_eq!(got.ok(), Some(Ok(n.max(0).unsigned_abs()))),
        Some((0, n)) => assert_eq!(
            got.ok(),
            Some(Err(Duration::from_micros(n.max(0).unsigned_abs())))
        ),
        _ => assert_unexpected(&got, &reply),
    }
    Ok(())
}

fn acquire(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(1..=3)?;
    let reply = reply(u, |u| Ok(Value::Int(u.int_in_range(-2..=5)?)))?;
    let sets = sets(n);
    let got = fuzzing::acquire_decision(reply.clone(), &sets);
    match int(&reply) {
        // 0: the lease is taken; i: set i is full; anything else admits nobody.
        Some(0) => assert_eq!(got.ok(), Some(None)),
        Some(i) if (1..=n as i64).contains(&i) => {
            assert_eq!(got.ok(), Some(Some(sets[i as usize - 1].2.clone())));
        }
        _ => assert_unexpected(&got, &reply),
    }
    Ok(())
}

/// The revocation check: a token marker revokes; a subject's cutoff revokes credentials
/// issued before it and those without an issue time; an unreadable cutoff revokes (fail
/// closed); a reply of the wrong shape is an error, never "not revoked".
fn revocation(u: &mut Unstructured<'_>) -> Result<()> {
    let token: bool = u.arbitrary()?;
    let subject = !token || u.arbitrary()?;
    let issued_ms: Option<u64> = if u.arbitrary()? {
        Some(u.int_in_range(0..=4_000_000_000_000)?)
    } else {
        u.arbitrary()?
    };
    let principal = subject.then(|| {
        let p = Principal::new("alice", None);
        match issued_ms.and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))) {
            Some(at) => p.with_issued_at(at),
            None => p,
        }
    });
    let reply = reply(u, |u| {
        let n = usize::from(token) + usize::from(subject);
        let items = (0..n)
            .map(|_| {
                Ok(match u.choose_index(3)? {
                    0 => Value::Nil,
                    1 => Value::BulkString(
                        u.int_in_range(0u64..=4_000_000_000_000)?
                            .to_string()
                            .into_bytes(),
                    ),
                    _ => value(u, 1)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Value::Array(items))
    })?;
    let got = fuzzing::revocation_decision(reply.clone(), principal.as_ref(), token);
    let issued = principal.as_ref().and_then(Principal::issued_at);
    let expected: Option<bool> = (|| {
        let Value::Array(items) = &reply else {
            return None;
        };
        if items.len() != usize::from(token) + usize::from(subject) {
            return None;
        }
        let read = |v: &Value| match v {
            Value::Nil => Some(None),
            Value::BulkString(b) => Some(Some(b.clone())),
            _ => None,
        };
        let mut items = items.iter();
        if token && read(items.next()?)?.is_some() {
            return Some(true);
        }
        if !subject {
            return Some(false);
        }
        let Some(cutoff) = read(items.next()?)? else {
            return Some(false);
        };
        let cutoff = std::str::from_utf8(&cutoff)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        Some(match (cutoff, issued) {
            (Some(cutoff), Some(issued)) => issued < cutoff,
            _ => true,
        })
    })();
    match expected {
        Some(revoked) => assert_eq!(got.ok(), Some(revoked), "{reply:?}"),
        None => assert_unexpected(&got, &reply),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match data.first().map(|b| b % 3) {
        Some(0) => gcra(&mut u),
        Some(1) => acquire(&mut u),
        _ => revocation(&mut u),
    };
});
