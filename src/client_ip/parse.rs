//! Parsers for the proxy headers that carry the client address chain.
//!
//! Every parser is total: any byte sequence yields a list of hops, where a hop that cannot be
//! read as an address is [`Hop::Unusable`]. Nothing here panics on input from the network.
//!
//! The parsers work on raw bytes and confine damage to one list element: the client writes
//! the left part of a forwarding header and a trusted proxy appends its entry on the right,
//! so nothing the client sends (a non-ASCII byte, an unterminated quote) may make the
//! proxy's entry unreadable. `X-Forwarded-For` splits on every comma; `Forwarded` pairs its
//! quotes from the **right**, where the proxies' well-formed entries are, so a stray quote
//! on the left swallows only what is left of it.

use std::net::{IpAddr, SocketAddr};

/// One entry of a forwarding chain, leftmost (the original client) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hop {
    /// An address.
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier, an element without `for=`, or garbage.
    Unusable,
}

/// Parses one `X-Forwarded-For` style address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:80`. Anything but ASCII is [`Hop::Unusable`].
pub(crate) fn parse_addr(raw: &[u8]) -> Hop {
    let Ok(raw) = std::str::from_utf8(raw.trim_ascii()) else {
        return Hop::Unusable;
    };
    if !raw.is_ascii() {
        return Hop::Unusable;
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Hop::Ip(ip);
    }
    if let Ok(sock) = raw.parse::<SocketAddr>() {
        return Hop::Ip(sock.ip());
    }
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
        && ip.is_ipv6()
    {
        return Hop::Ip(ip);
    }
    Hop::Unusable
}

/// Parses the comma-separated list of one or more `X-Forwarded-For` header values, in order.
/// Empty list elements carry no hop.
pub(crate) fn x_forwarded_for<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Hop> {
    values
        .into_iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .filter(|element| !element.trim_ascii().is_empty())
        .map(parse_addr)
        .collect()
}

/// Splits `s` on `sep` outside double-quoted strings, scanning from the right: a quote
/// closes (seen first from the right) and opens a quoted string, and inside one a quote
/// preceded by an odd number of backslashes is escaped. A quoted string that never opens
/// runs to the start of the input. Returns the parts left to right.
fn split_unquoted_from_right(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut end = s.len();
    let mut in_quotes = false;
    let mut i = s.len();
    while i > 0 {
        i -= 1;
        let b = s[i];
        if b == b'"' {
            let backslashes = s[..i].iter().rev().take_while(|c| **c == b'\\').count();
            if !(in_quotes && backslashes % 2 == 1) {
                in_quotes = !in_quotes;
            }
        } else if b == sep && !in_quotes {
            parts.push(&s[i + 1..end]);
            end = i;
        }
    }
    parts.push(&s[..end]);
    parts.reverse();
    parts
}

/// Reads an RFC 7230 token or quoted-string value; `None` if the quoting is broken or the
/// value is not ASCII.
fn unquote(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value.trim_ascii()).ok()?;
    if !value.is_ascii() {
        return None;
    }
    let Some(rest) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = rest.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}
/// Parses an RFC 7239 `node`: `192.0.2.60`, `192.0.2.60:47011`, `"[2001:db8::1]:4711"`,
/// `unknown` or an obfuscated `_identifier` (the last two are [`Hop::Unusable`]).
fn parse_node(node: &str) -> Hop {
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Hop::Unusable;
    }
    if let Some(rest) = node.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Hop::Unusable;
        };
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.chars().all(valid_port_char));
        return match inner.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) if port_ok => Hop::Ip(ip),
            _ => Hop::Unusable,
        };
    }
    let host = match node.split_once(':') {
        Some((host, port)) if !port.is_empty() && port.chars().all(valid_port_char) => host,
        Some(_) => return Hop::Unusable,
        None => node,
    };
    match host.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V4(_)) => Hop::Ip(ip),
        _ => Hop::Unusable,
    }
}

/// A port is digits, or an obfuscated port `_abc` (letters, digits, `.`, `_`, `-`).
fn valid_port_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Parses one or more RFC 7239 `Forwarded` header values, in order: one hop per
/// forwarded-element, read from its `for` parameter.
pub(crate) fn forwarded<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in values {
        for element in split_unquoted_from_right(value, b',') {
            if element.trim_ascii().is_empty() {
                // Empty list elements are allowed by the list syntax and carry no hop.
                continue;
            }
            let mut hop = Hop::Unusable;
            for pair in split_unquoted_from_right(element, b';') {
                let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                    continue;
                };
                let (name, val) = (&pair[..eq], &pair[eq + 1..]);
                if name.trim_ascii().eq_ignore_ascii_case(b"for") {
                    hop = unquote(val).map_or(Hop::Unusable, |v| parse_node(&v));
                    break;
                }
            }
            hops.push(hop);
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Hop {
        Hop::Ip(s.parse().unwrap())
    }

    #[test]
    fn forwarded_cases() {
        struct Case {
            name: &'static str,
            input: &'static [&'static str],
            want: Vec<Hop>,
        }
        let cases = [
            Case {
                name: "ipv4",
                input: &["for=192.0.2.60;proto=http;by=203.0.113.43"],
                want: vec![ip("192.0.2.60")],
            },
            Case {
                name: "quoted ipv6 with port",
                input: &[r#"for="[2001:db8:cafe::17]:4711""#],
                want: vec![ip("2001:db8:cafe::17")],
            },
            Case {
                name: "quoted ipv6 without port",
                input: &[r#"For="[2001:db8::1]""#],
                want: vec![ip("2001:db8::1")],
            },
            Case {
                name: "two elements and two lines",
                input: &["for=192.0.2.43, for=198.51.100.17", "for=10.0.0.1:8080"],
                want: vec![ip("192.0.2.43"), ip("198.51.100.17"), ip("10.0.0.1")],
            },
            Case {
                name: "unknown and obfuscated",
                input: &["for=unknown, for=_hidden, for=\"_gazonk:_port\""],
                want: vec![Hop::Unusable, Hop::Unusable, Hop::Unusable],
            },
            Case {
                name: "element without for",
                input: &["proto=https;by=1.2.3.4"],
                want: vec![Hop::Unusable],
            },
            Case {
                name: "unbracketed ipv6 is not valid",
                input: &["for=2001:db8::1"],
                want: vec![Hop::Unusable],
            },
            Case {
                name: "quoted comma does not split",
                input: &[r#"for=1.2.3.4;x="a,b", for=5.6.7.8"#],
                want: vec![ip("1.2.3.4"), ip("5.6.7.8")],
            },
            Case {
                name: "broken quoting",
                input: &[r#"for="[2001:db8::1]"#],
                want: vec![Hop::Unusable],
            },
            Case {
                name: "ipv4 in brackets is not valid",
                input: &[r#"for="[1.2.3.4]""#],
                want: vec![Hop::Unusable],
            },
            Case {
                name: "empty elements skipped",
                input: &[" , for=1.2.3.4 ,"],
                want: vec![ip("1.2.3.4")],
            },
            Case {
                name: "unterminated quote on the left swallows only the left",
                input: &[r#"for="6.6.6.6, for=1.2.3.4, for="[2001:db8::1]:80""#],
                want: vec![Hop::Unusable, ip("1.2.3.4"), ip("2001:db8::1")],
            },
            Case {
                name: "escaped quote inside a quoted string",
                input: &[r#"for=1.2.3.4;x="a\",b", for=5.6.7.8"#],
                want: vec![ip("1.2.3.4"), ip("5.6.7.8")],
            },
            Case {
                name: "bad port",
                input: &["for=1.2.3.4:", r#"for="[::1]:x y""#],
                want: vec![Hop::Unusable, Hop::Unusable],
            },
        ];
        for case in cases {
            assert_eq!(
                forwarded(case.input.iter().map(|s| s.as_bytes())),
                case.want,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn x_forwarded_for_cases() {
        struct Case {
            name: &'static str,
            input: &'static [&'static str],
            want: Vec<Hop>,
        }
        let cases = [
            Case {
                name: "chain",
                input: &["203.0.113.7, 10.0.0.2"],
                want: vec![ip("203.0.113.7"), ip("10.0.0.2")],
            },
            Case {
                name: "ports and brackets",
                input: &[
                    "1.2.3.4:5678",
                    "[2001:db8::9]:443, [2001:db8::a], 2001:db8::b",
                ],
                want: vec![
                    ip("1.2.3.4"),
                    ip("2001:db8::9"),
                    ip("2001:db8::a"),
                    ip("2001:db8::b"),
                ],
            },
            Case {
                name: "garbage; the empty element carries no hop",
                input: &["not-an-ip,, 999.1.1.1"],
                want: vec![Hop::Unusable, Hop::Unusable],
            },
        ];
        for case in cases {
            assert_eq!(
                x_forwarded_for(case.input.iter().map(|s| s.as_bytes())),
                case.want,
                "{}",
                case.name
            );
        }
    }

    mod properties {
        use std::net::{IpAddr, SocketAddr};

        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Any bytes: one hop per non-blank `X-Forwarded-For` element, and at most one
            /// per `Forwarded` element, never a panic.
            #[test]
            fn any_bytes_give_one_hop_per_element(
                values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
            ) {
                let elements = values
                    .iter()
                    .flat_map(|v| v.split(|b| *b == b','))
                    .filter(|e| !e.trim_ascii().is_empty())
                    .count();
                let xff = x_forwarded_for(values.iter().map(Vec::as_slice));
                prop_assert_eq!(xff.len(), elements);
                let fwd = forwarded(values.iter().map(Vec::as_slice));
                prop_assert!(fwd.len() <= elements);
                for v in &values {
                    let _ = parse_addr(v);
                }
            }

            /// Every address, with or without a port or brackets, reads back as itself.
            #[test]
            fn addresses_round_trip(ip in any::<IpAddr>(), port in any::<u16>()) {
                let sock = SocketAddr::new(ip, port).to_string();
                prop_assert_eq!(parse_addr(ip.to_string().as_bytes()), Hop::Ip(ip));
                prop_assert_eq!(parse_addr(sock.as_bytes()), Hop::Ip(ip));
                let node = match ip {
                    IpAddr::V4(v4) => format!("for={v4}:{port}"),
                    IpAddr::V6(v6) => format!("for=\"[{v6}]:{port}\""),
                };
                prop_assert_eq!(forwarded([node.as_bytes()]), vec![Hop::Ip(ip)]);
                prop_assert_eq!(x_forwarded_for([format!(" {sock} ,").as_bytes()]), vec![Hop::Ip(ip)]);
            }
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "",
            "\"",
            "\\",
            "for=\"\\",
            "for=\"[",
            "for=[",
            "for=]",
            "for=\"[]\"",
            "for=\"[::1]:\"",
            ";;;,,,===",
            "for==",
            "for=\"\u{e9}\"",
            "[\u{1F600}]:1",
            "for=\"[::1\"]",
        ];
        for s in odd {
            let _ = forwarded([s.as_bytes()]);
            let _ = x_forwarded_for([s.as_bytes()]);
            let _ = parse_addr(s.as_bytes());
        }
    }
}
