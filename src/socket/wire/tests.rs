//! The frame meter on hand-made byte streams, fed whole and split at every byte.

use std::time::Duration;

use tokio::time::Instant;

use super::{FrameMeter, WireLimits};
use crate::socket::{CloseCause, MessageRate};
use crate::test_support::nz;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const PING: u8 = 0x9;

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn limits(frames: u64, fragments: u32) -> WireLimits {
    WireLimits {
        frame_rate: MessageRate::new(nz(frames), Duration::from_secs(3600)),
        max_fragments: fragments,
    }
}

struct Case {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    limits: WireLimits,
    /// The index of the offending frame and the cause, or `None`.
    violation: Option<(usize, CloseCause)>,
    /// Whether a frame or message is unfinished at the end.
    in_progress: bool,
}

fn cases() -> Vec<Case> {
    let big = vec![7u8; 70_000];
    vec![
        Case {
            name: "whole messages of every length encoding",
            frames: vec![
                frame(true, TEXT, b"hi"),
                frame(true, BINARY, &[1u8; 300]),
                frame(true, BINARY, &big),
                frame(true, PING, b""),
            ],
            limits: limits(10, 2),
            violation: None,
            in_progress: false,
        },
        Case {
            name: "fragments within the limit, control frames between them",
            frames: vec![
                frame(false, TEXT, b"a"),
                frame(true, PING, b"p"),
                frame(false, CONT, b""),
                frame(true, CONT, b"c"),
                frame(true, TEXT, b"next"),
            ],
            limits: limits(10, 3),
            violation: None,
            in_progress: false,
        },
        Case {
            name: "one fragment too many",
            frames: vec![
                frame(false, TEXT, b"a"),
                frame(false, CONT, b""),
                frame(false, CONT, b""),
                frame(false, CONT, b""),
            ],
            limits: limits(10, 3),
            violation: Some((3, CloseCause::TooManyFragments)),
            in_progress: true,
        },
        Case {
            name: "the fragment count restarts with each message",
            frames: vec![
                frame(false, BINARY, b"a"),
                frame(true, CONT, b"b"),
                frame(false, BINARY, b"a"),
                frame(true, CONT, b"b"),
            ],
            limits: limits(10, 2),
            violation: None,
            in_progress: false,
        },
        Case {
            name: "control frames count against the frame rate",
            frames: vec![frame(true, PING, b""); 4],
            limits: limits(3, 100),
            violation: Some((3, CloseCause::FrameRate)),
            in_progress: false,
        },
        Case {
            name: "an unfinished message is in progress",
            frames: vec![frame(false, TEXT, b"never"), frame(false, CONT, b"")],
            limits: limits(10, 10),
            violation: None,
            in_progress: true,
        },
    ]
}

/// Feeds `bytes` in chunks of `chunk` bytes; returns the absolute offset of a violation.
fn run(meter: &mut FrameMeter, bytes: &[u8], chunk: usize) -> Option<(usize, CloseCause)> {
    let now = Instant::now();
    let mut offset = 0;
    for part in bytes.chunks(chunk) {
        if let Err((at, cause)) = meter.feed(part, now) {
            return Some((offset + at, cause));
        }
        offset += part.len();
    }
    None
}

#[tokio::test(start_paused = true)]
async fn frames_are_counted_however_the_bytes_are_split() {
    for case in cases() {
        let bytes: Vec<u8> = case.frames.concat();
        let starts: Vec<usize> = case
            .frames
            .iter()
            .scan(0, |at, f| {
                let start = *at;
                *at += f.len();
                Some(start)
            })
            .collect();
        // Whole, then split at every size up to a little more than the largest header.
        for chunk in [bytes.len(), 1, 2, 3, 5, 7, 13, 16, 4096] {
            let mut meter = FrameMeter::new(case.limits, Instant::now());
            let got = run(&mut meter, &bytes, chunk);
            match case.violation {
                None => assert_eq!(got, None, "{} (chunks of {chunk})", case.name),
                Some((index, cause)) => {
                    let (at, got_cause) =
                        got.unwrap_or_else(|| panic!("{}: no violation", case.name));
                    assert_eq!(got_cause, cause, "{} (chunks of {chunk})", case.name);
                    // Nothing of the offending frame goes up: the cut is at its start, or at
                    // the start of the chunk that completed its header.
                    let start = starts[index];
                    let header_end = start + case.frames[index].len();
                    assert!(
                        at == start || (at % chunk == 0 && at > start && at < header_end),
                        "{} (chunks of {chunk}): at {at}, frame at {start}",
                        case.name
                    );
                }
            }
            if case.violation.is_none() {
                assert_eq!(
                    meter.started().is_some(),
                    case.in_progress,
                    "{} (chunks of {chunk})",
                    case.name
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_frame_rate_refills_and_the_start_of_a_message_is_kept() {
    let mut meter = FrameMeter::new(
        WireLimits {
            frame_rate: MessageRate::per_second(nz(2)),
            max_fragments: 100,
        },
        Instant::now(),
    );
    let first = Instant::now();
    assert!(meter.feed(&frame(false, TEXT, b"a"), first).is_ok());
    assert_eq!(meter.started(), Some(first));
    assert!(meter.feed(&frame(false, CONT, b""), first).is_ok());
    assert!(matches!(
        meter.feed(&frame(false, CONT, b""), first),
        Err((0, CloseCause::FrameRate))
    ));

    let mut meter = FrameMeter::new(
        WireLimits {
            frame_rate: MessageRate::per_second(nz(2)),
            max_fragments: 100,
        },
        Instant::now(),
    );
    assert!(meter.feed(&frame(false, TEXT, b"a"), first).is_ok());
    for i in 1..10u64 {
        let later = first + Duration::from_secs(i);
        assert!(meter.feed(&frame(false, CONT, b""), later).is_ok());
        // Continuations do not restart the message's clock.
        assert_eq!(meter.started(), Some(first));
    }
    assert!(
        meter
            .feed(&frame(true, CONT, b""), first + Duration::from_secs(20))
            .is_ok()
    );
    assert_eq!(meter.started(), None, "the message is complete");
}

#[tokio::test(start_paused = true)]
async fn after_a_violation_the_meter_still_sees_the_peers_close_frame() {
    const CLOSE: u8 = 0x8;
    let now = Instant::now();
    let mut meter = FrameMeter::new(limits(2, 10), now);
    // The third frame breaks the frame rate; the close frame after it is still followed,
    // in the same chunk and split over the next ones.
    let mut bytes = [
        frame(true, PING, b""),
        frame(true, PING, b""),
        frame(true, BINARY, &[1; 300]),
    ]
    .concat();
    let close = frame(true, CLOSE, &1000u16.to_be_bytes());
    let offending = bytes.len() - frame(true, BINARY, &[1; 300]).len();
    bytes.extend_from_slice(&close[..3]);
    assert!(matches!(
        meter.feed(&bytes, now),
        Err((at, CloseCause::FrameRate)) if at == offending
    ));
    assert!(!meter.close_seen());
    assert!(meter.feed(&close[3..5], now).is_ok());
    assert!(!meter.close_seen());
    assert!(meter.feed(&close[5..], now).is_ok());
    assert!(meter.close_seen());
}

struct DrainCase {
    name: &'static str,
    /// What the peer sends after the protocol gave up.
    sent: Vec<u8>,
    /// Whether the peer ends the stream after it.
    eof: bool,
    budget: u64,
    /// The bytes the drain should have taken off the connection when it is over.
    read: usize,
}

#[tokio::test]
async fn the_drain_ends_at_the_peers_close_the_end_of_the_stream_or_the_budget() {
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    let junk = frame(true, BINARY, &[9; 10_000]);
    let close = frame(true, 0x8, &1000u16.to_be_bytes());
    let cases = [
        DrainCase {
            name: "the peer's close frame",
            // More after the close than one read takes.
            sent: [junk.clone(), close.clone(), vec![0; 2 * super::LEND]].concat(),
            eof: false,
            budget: 1 << 20,
            read: junk.len() + close.len(),
        },
        DrainCase {
            name: "the end of the stream",
            sent: junk.clone(),
            eof: true,
            budget: 1 << 20,
            read: junk.len(),
        },
        DrainCase {
            name: "the byte budget",
            sent: [junk.clone(), junk.clone()].concat(),
            eof: false,
            budget: 5000,
            read: 5000,
        },
    ];
    for case in cases {
        let (server, mut peer) = tokio::io::duplex(4 * super::LEND);
        let report = std::sync::Arc::new(super::WireReport::default());
        let mut io = super::WireIo::new(server, limits(1000, 10), case.budget, report);
        peer.write_all(&case.sent).await.unwrap();
        if case.eof {
            peer.shutdown().await.unwrap();
        }
        poll_fn(|cx| io.poll_drain(cx)).await;
        // What is left unread on the connection.
        drop(peer.shutdown().await);
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut io.io, &mut rest)
            .await
            .unwrap();
        // The drain reads in lent buffers: it may read past the close frame by less than one
        // (never past the budget).
        let read = case.sent.len() - rest.len();
        assert!(
            read >= case.read && read < case.read + super::LEND,
            "{}: read {read}, expected {}",
            case.name,
            case.read
        );
    }
}

/// An IO that counts the reads that reach it.
struct CountingIo<T> {
    io: T,
    reads: usize,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.reads += 1;
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

#[tokio::test]
async fn small_reads_above_take_one_lent_read_below_and_an_idle_socket_holds_no_buffer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server, mut peer) = tokio::io::duplex(4 * super::LEND);
    let report = std::sync::Arc::new(super::WireReport::default());
    let counting = CountingIo {
        io: server,
        reads: 0,
    };
    let mut io = super::WireIo::new(counting, limits(1000, 10), 0, report.clone());
    let message = frame(true, BINARY, &[7; 40_000]);
    peer.write_all(&message).await.unwrap();

    // Read as tungstenite does with a small buffer: 1 KiB at a time.
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while got.len() < message.len() {
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, message);
    assert_eq!(
        io.io.reads, 1,
        "one read of the connection for the whole message"
    );
    assert!(
        io.unread.is_none(),
        "the buffer is given back once passed up"
    );
    assert!(report.violation().is_none());

    // Nothing to read: the read is pending and holds no buffer.
    let pending = futures_util::FutureExt::now_or_never(io.read(&mut chunk));
    assert!(pending.is_none());
    assert!(io.unread.is_none());

    // A read as large as a lent buffer goes straight to the connection.
    peer.write_all(&message).await.unwrap();
    let reads = io.io.reads;
    let mut large = vec![0u8; super::LEND];
    let n = io.read(&mut large).await.unwrap();
    assert_eq!(&large[..n], &message[..n]);
    assert_eq!(io.io.reads, reads + 1);
    assert!(io.unread.is_none());
}

#[tokio::test]
async fn a_violation_in_lent_bytes_passes_up_what_precedes_it_and_drops_the_rest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server, mut peer) = tokio::io::duplex(4 * super::LEND);
    let report = std::sync::Arc::new(super::WireReport::default());
    // Two frames allowed: the third breaks the frame rate.
    let mut io = super::WireIo::new(server, limits(2, 10), 1 << 20, report.clone());
    let ok = frame(true, BINARY, &[1; 100]);
    let bad = frame(true, BINARY, &[2; 3000]);
    let close = frame(true, 0x8, &1000u16.to_be_bytes());
    let sent = [ok.clone(), ok.clone(), bad.clone(), close].concat();
    peer.write_all(&sent).await.unwrap();

    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    loop {
        match futures_util::FutureExt::now_or_never(io.read(&mut chunk)) {
            Some(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    assert_eq!(
        got,
        [ok.clone(), ok].concat(),
        "the frames before the offending one"
    );
    assert_eq!(report.violation(), Some(CloseCause::FrameRate));
    assert!(io.unread.is_none(), "the rest is dropped");
    assert!(
        io.meter.close_seen(),
        "and still followed: the peer's close frame was seen"
    );
}
