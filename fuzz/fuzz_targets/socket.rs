//! The socket driver fed raw frames, end to end in-process: an axum echo route under
//! `SocketPolicyLayer` (small limits, short deadlines) served by hyper over a
//! `tokio::io::duplex`, on a current-thread runtime with paused time, so every deadline
//! elapses as soon as nothing else can happen. After a valid handshake the fuzz input is
//! written as the client's bytes, and the client's write side stays open (no EOF): whatever
//! the bytes are, the server must end the connection by itself. Checks: no panic, no hang;
//! the server's output after its `101` is well-formed server frames (unmasked, no reserved
//! bits or opcodes, control frames final and short, text valid UTF-8), with exactly one close
//! frame, the last, carrying a code a server may send.
#![no_main]

use std::{num::NonZeroU32, num::NonZeroUsize, time::Duration};

use axum::{Router, extract::ws::Message, response::Response, routing::any};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsguard::socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer};

const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// Far past every deadline of the policy: reaching it means the server never ended.
const HANG: Duration = Duration::from_secs(24 * 3600);

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

fn app() -> Router {
    let policy = SocketPolicyLayer::new()
        .max_message_size(nz(1024))
        .max_frame_size(nz(1024))
        .max_fragments(NonZeroU32::new(4).expect("non-zero"))
        .read_buffer_size(nz(256))
        .recv_queue(nz(4))
        .idle_timeout(Duration::from_secs(20))
        .message_deadline(Duration::from_secs(2))
        .heartbeat(Duration::from_secs(5), Duration::from_secs(3))
        .close_timeout(Duration::from_secs(1));
    Router::new().route("/ws", any(echo)).layer(policy)
}

async fn echo(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_))
                && socket.send(msg).await.is_err()
            {
                break;
            }
        }
    })
}

/// A server frame: `(fin, opcode, payload)`.
type Frame<'a> = (bool, u8, &'a [u8]);

/// One server frame and the bytes it took, or why it is not one.
fn frame(buf: &[u8]) -> Result<(Frame<'_>, usize), String> {
    let (&b0, &b1) = (
        buf.first().ok_or("empty")?,
        buf.get(1).ok_or("a cut header")?,
    );
    if b0 & 0x70 != 0 {
        return Err(format!("reserved bits {b0:#04x}"));
    }
    if b1 & 0x80 != 0 {
        return Err("a masked server frame".into());
    }
    let (len, at): (usize, usize) = match b1 & 0x7F {
        126 => {
            let ext = buf.get(2..4).ok_or("a cut length")?;
            (usize::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
        }
        127 => {
            let ext: [u8; 8] = buf
                .get(2..10)
                .ok_or("a cut length")?
                .try_into()
                .map_err(|_| "a cut length")?;
            (
                usize::try_from(u64::from_be_bytes(ext)).map_err(|_| "a huge length")?,
                10,
            )
        }
        n => (usize::from(n), 2),
    };
    let payload = buf
        .get(at..at.checked_add(len).ok_or("a huge length")?)
        .ok_or_else(|| {
            format!(
                "a cut payload: {len} bytes announced, {} there",
                buf.len() - at
            )
        })?;
    let (fin, op) = (b0 & 0x80 != 0, b0 & 0x0F);
    match op {
        0x0..=0x2 => {}
        0x8..=0xA if !fin || len > 125 => {
            return Err(format!("control frame {op:#x}: fin {fin}, {len} bytes"));
        }
        0x8..=0xA => {}
        _ => return Err(format!("reserved opcode {op:#x}")),
    }
    Ok(((fin, op, payload), at + len))
}

/// Checks the server's frames; `Err` says what is wrong.
fn check(mut out: &[u8]) -> Result<(), String> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        let (f, used) = frame(out).map_err(|e| format!("frame {}: {e}", frames.len()))?;
        frames.push(f);
        out = &out[used..];
    }
    let closes = frames.iter().filter(|(_, op, _)| *op == 0x8).count();
    let Some((_, last_op, last)) = frames.last() else {
        return Err("no frame at all: the connection ended without a close frame".into());
    };
    if *last_op != 0x8 {
        return Err(format!(
            "the last of {} frames is opcode {last_op:#x}, not a close frame ({closes} close frames)",
            frames.len()
        ));
    }
    if closes != 1 {
        return Err(format!("{closes} close frames"));
    }
    match last.len() {
        0 => {}
        1 => return Err("a close payload of 1 byte".into()),
        _ => {
            let code = u16::from_be_bytes([last[0], last[1]]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(format!("close code {code}"));
            }
            std::str::from_utf8(&last[2..]).map_err(|_| "a close reason that is not UTF-8")?;
        }
    }
    for (i, (fin, op, payload)) in frames.iter().enumerate() {
        if *op == 0x1 && *fin && std::str::from_utf8(payload).is_err() {
            return Err(format!("frame {i}: text that is not UTF-8"));
        }
    }
    Ok(())
}

async fn run(input: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let service = TowerToHyperService::new(app());
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades()
            .await;
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(HANDSHAKE)
        .await
        .expect("the handshake is written");
    let mut out = Vec::new();
    let head_end = loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = rd.read(&mut chunk).await.expect("the answer is read");
        assert!(n > 0, "the server closed during the handshake: {out:?}");
        out.extend_from_slice(&chunk[..n]);
    };
    assert!(
        out.starts_with(b"HTTP/1.1 101"),
        "not upgraded: {:?}",
        String::from_utf8_lossy(&out[..head_end])
    );
    out.drain(..head_end);
    // The input goes in while the output is read; the write side stays open to the end.
    let writer = async move {
        let _ = wr.write_all(input).await;
        wr
    };
    let reader = async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let (_wr, ()) = tokio::join!(writer, reader);
    out
}

fuzz_target!(|input: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let out = rt
        .block_on(async { tokio::time::timeout(HANG, run(input)).await })
        .expect("the server ended the connection by itself");
    if let Err(defect) = check(&out) {
        panic!("{defect}; server output after the 101: {out:?}");
    }
});
