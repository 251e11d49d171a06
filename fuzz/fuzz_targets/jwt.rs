//! `JwtAuthenticator::verify`, HS256 and ES256. Arbitrary strings are never accepted (no
//! panic either); tokens signed over fuzz-made claims (any JSON type for `sub`, `exp`,
//! `nbf`, `iat`, `aud`, `iss`, extra claims) are accepted exactly when the model says
//! (the configured algorithm and key, a non-empty string `sub`, `exp` + leeway after now, no
//! `nbf` after now + leeway, the audience, the issuer for HS256), with that subject and
//! expiry; unsigned (`alg: none`) and signature-stripped versions are refused, and so is any
//! single changed character of a token that verifies.
#![no_main]

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arbitrary::Arbitrary;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};
use wsguard::auth::{Algorithm, AuthError, DecodingKey, JwtAuthenticator};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for the fuzzer";
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private_pkcs8.der");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public_sec1.bin");
const NOW: u64 = 1_800_000_000;
const LEEWAY: f64 = 60.0;
const AUDIENCE: &str = "chat";
const ISSUER: &str = "https://id.example.com";

#[derive(Debug, Arbitrary)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Int(n) => Value::from(*n),
            Self::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Str(s) => Value::String(s.clone()),
            Self::Arr(items) => Value::Array(items.iter().take(4).map(Self::flat).collect()),
        }
    }

    /// Array items, one level deep.
    fn flat(&self) -> Value {
        match self {
            Self::Arr(_) => Value::Null,
            other => other.value(),
        }
    }
}

/// A claim's value: near now (seconds from now, maybe fractional), well-known, or any.
#[derive(Debug, Arbitrary)]
enum Claim {
    Near(i16, u8),
    Known(u8),
    Any(Json),
}

impl Claim {
    fn value(&self) -> Value {
        match self {
            Self::Near(secs, frac) => {
                let t = NOW as f64 + f64::from(*secs) + f64::from(*frac) / 256.0;
                if *frac == 0 {
                    Value::from(t as i64)
                } else {
                    Number::from_f64(t).map_or(Value::Null, Value::Number)
                }
            }
            Self::Known(i) => match i % 6 {
                0 => Value::from("alice"),
                1 => Value::from(AUDIENCE),
                2 => Value::from(ISSUER),
                3 => Value::from(vec![Value::from("other"), Value::from(AUDIENCE)]),
                4 => Value::from(vec![Value::from(ISSUER), Value::from(1)]),
                _ => Value::from(""),
            },
            Self::Any(json) => json.value(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    garbage: &'a str,
    /// Modulo 4: HS256, HS384, HS512 with the secret, ES256.
    alg: u8,
    sub: Option<Claim>,
    exp: Option<Claim>,
    nbf: Option<Claim>,
    iat: Option<Claim>,
    aud: Option<Claim>,
    iss: Option<Claim>,
    extra: Vec<(String, Json)>,
    /// A character to change in a token that verifies, and how.
    at: u16,
    bit: u8,
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

static HS256: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::hs256(SECRET)
        .issuer([ISSUER])
        .leeway(Duration::from_secs(60))
        .clock(now)
        .audience([AUDIENCE])
});

static ES256: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::es256(DecodingKey::from_ec_der(EC_PUBLIC))
        .leeway(Duration::from_secs(60))
        .clock(now)
        .audience([AUDIENCE])
});

static HS_KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(SECRET));
static ES_KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_ec_der(EC_PRIVATE));

fn refused(token: &str, what: &str) {
    for (name, auth) in [("HS256", &*HS256), ("ES256", &*ES256)] {
        let got = auth.verify(token);
        assert!(
            matches!(got, Err(AuthError::Malformed | AuthError::Invalid)),
            "{what} accepted by {name} (or expired, so its signature held): {token:?}: {:?}",
            got.map(|v| v.principal().subject().to_owned())
        );
    }
}

/// A claim read as a NumericDate the simple way: a JSON number, negatives at the epoch.
fn date(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64).map(|t| t.max(0.0))
}

/// Whether `value` is `want` or an array of strings holding it.
fn names(value: Option<&Value>, want: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.iter().any(|i| i.as_str() == Some(want))
        }
        _ => false,
    }
}

/// The model: `Some(accepted)`, or `None` when a date sits too close to a boundary for
/// float rounding to be judged here.
fn model(claims: &Map<String, Value>, issuer: bool) -> Option<bool> {
    let now = NOW as f64;
    let near = |t: f64| (t - now).abs() < 0.01;
    let sub_ok = claims
        .get("sub")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let exp = date(claims.get("exp"));
    let exp_ok = match exp {
        Some(exp) if near(exp + LEEWAY) => return None,
        Some(exp) => exp + LEEWAY > now,
        None => false,
    };
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(nbf) => match date(Some(nbf)) {
            Some(nbf) if near(nbf - LEEWAY) => return None,
            Some(nbf) => nbf <= now + LEEWAY,
            None => false,
        },
    };
    let aud_ok = names(claims.get("aud"), AUDIENCE);
    let iss_ok = !issuer || names(claims.get("iss"), ISSUER);
    Some(sub_ok && exp_ok && nbf_ok && aud_ok && iss_ok)
}

fuzz_target!(|input: Input<'_>| {
    refused(input.garbage, "garbage");

    let mut claims = Map::new();
    for (name, value) in input.extra.iter().take(4) {
        claims.insert(name.clone(), value.value());
    }
    for (name, claim) in [
        ("sub", &input.sub),
        ("exp", &input.exp),
        ("nbf", &input.nbf),
        ("iat", &input.iat),
        ("aud", &input.aud),
        ("iss", &input.iss),
    ] {
        if let Some(claim) = claim {
            claims.insert(name.to_owned(), claim.value());
        }
    }
    let (alg, key) = match input.alg % 4 {
        0 => (Algorithm::HS256, &*HS_KEY),
        1 => (Algorithm::HS384, &*HS_KEY),
        2 => (Algorithm::HS512, &*HS_KEY),
        _ => (Algorithm::ES256, &*ES_KEY),
    };
    let token = jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("signed");

    let mut verifies = false;
    for (auth, configured, issuer) in [
        (&*HS256, Algorithm::HS256, true),
        (&*ES256, Algorithm::ES256, false),
    ] {
        let got = auth.verify(&token);
        let expected = if alg == configured {
            model(&claims, issuer)
        } else {
            Some(false)
        };
        match (&got, expected) {
            (Ok(verified), Some(true) | None) => {
                verifies = true;
                let principal = verified.principal();
                assert_eq!(
                    Some(principal.subject()),
                    claims.get("sub").and_then(Value::as_str)
                );
                let exp = date(claims.get("exp")).expect("a numeric exp");
                let at = principal
                    .expires_at()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64())
                    .expect("an expiry");
                assert!(
                    (at - exp.min(253_402_300_799.0)).abs() < 1e-3,
                    "expiry {at} for exp {exp}"
                );
                // The claims as the token carries them: serde_json reads some floats back a
                // unit in the last place off (no `float_roundtrip`), so compare with a read.
                let sent: Value = serde_json::to_string(&claims)
                    .ok()
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .expect("claims serialise");
                assert_eq!(verified.identity(), &sent);
            }
            (Err(_), Some(false) | None) => {}
            (got, expected) => panic!(
                "{alg:?} token under {configured:?}: expected {expected:?}, got {:?}; claims {claims:?}",
                got.as_ref().map(|v| v.principal().subject().to_owned())
            ),
        }
    }

    // Unsigned and stripped.
    let (signed, _) = token.rsplit_once('.').expect("three segments");
    let (_, payload) = signed.split_once('.').expect("three segments");
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    refused(&format!("{none}.{payload}."), "alg none");
    refused(&format!("{signed}."), "an empty signature");
    refused(signed, "no signature");

    // One changed character of a token that verifies.
    if verifies {
        let mut changed = token.clone().into_bytes();
        let i = usize::from(input.at) % changed.len();
        changed[i] ^= 1 << (input.bit % 7);
        let changed = String::from_utf8(changed).expect("ASCII stays ASCII");
        refused(&changed, &format!("changed at {i}"));
    }
});
