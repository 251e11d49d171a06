//! Counting on the wire. tungstenite assembles fragments and answers control frames inside,
//! so a peer sending endless empty continuation frames never shows up as a message. The
//! [`WireIo`] adapter sits under tungstenite and parses frame headers as the bytes pass (the
//! payload is skipped, not copied): it counts frames (data, continuation and control alike)
//! in a token bucket, fragments per message, and records when the message in progress started,
//! for the driver's deadline. On a violation it stops passing bytes up and reports the cause
//! in a [`WireReport`], where the driver sees it.

use std::{
    fmt, io,
    pin::Pin,
    sync::{Mutex, PoisonError},
    task::{Context, Poll, ready},
};

use axum::{
    Error,
    body::Bytes,
    extract::ws::{CloseFrame, Message, Utf8Bytes},
};
use futures_util::{Sink, Stream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tungstenite::protocol::{self as ts, frame::coding::CloseCode};

use super::{CloseCause, MessageRate, rate::TokenBucket};

/// The wire limits of one socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WireLimits {
    pub(crate) frame_rate: MessageRate,
    pub(crate) max_fragments: u32,
}

/// What the adapter tells the driver: a violation, and when the frame or message in progress
/// started.
#[derive(Debug, Default)]
pub(crate) struct WireReport {
    state: Mutex<Report>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Report {
    violation: Option<CloseCause>,
    started: Option<Instant>,
}

impl WireReport {
    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The wire limit the peer broke, if any.
    pub(crate) fn violation(&self) -> Option<CloseCause> {
        self.lock().violation
    }

    /// When the first byte of the unfinished frame or message arrived (`None` between
    /// messages).
    pub(crate) fn started(&self) -> Option<Instant> {
        self.lock().started
    }

    fn publish(&self, report: Report) {
        *self.lock() = report;
    }
}

/// The incremental frame-header parser and its counters. Pure logic over byte chunks.
#[derive(Debug)]
pub(crate) struct FrameMeter {
    limits: WireLimits,
    frames: TokenBucket,
    /// The header read so far (at most 14 bytes); empty between frames.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// Data frames of the fragmented message in progress (0: none in progress).
    fragments: u32,
    started: Option<Instant>,
}

/// The header length once its first two bytes are known.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl FrameMeter {
    pub(crate) fn new(limits: WireLimits, now: Instant) -> Self {
        Self {
            frames: TokenBucket::new(limits.frame_rate, 1, now),
            limits,
            header: [0; 14],
            have: 0,
            payload_left: 0,
            fragments: 0,
            started: None,
        }
    }

    /// When the unfinished frame or message started.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Counts the frames in `bytes`, the next bytes from the peer. On a violation, returns
    /// where in `bytes` the offending frame starts (0 if it started in an earlier chunk) and
    /// the cause; the meter must not be fed again.
    pub(crate) fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<(), (usize, CloseCause)> {
        let mut i = 0;
        let mut frame_start = 0;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let left = bytes.len() - i;
                let take = usize::try_from(self.payload_left).map_or(left, |p| p.min(left));
                i += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            if self.have == 0 {
                frame_start = i;
                if self.started.is_none() {
                    self.started = Some(now);
                }
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have >= 2 && self.have == header_len(self.header[1]) {
                self.on_header(now).map_err(|cause| (frame_start, cause))?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self, now: Instant) -> Result<(), CloseCause> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut ext = [0u8; 8];
                ext.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(ext)
            }
            n => u64::from(n),
        };
        self.have = 0;
        if !self.frames.try_take(1, now) {
            return Err(CloseCause::FrameRate);
        }
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0F {
            // Continuation: one more fragment of the open message (tungstenite refuses one
            // without a message to continue).
            0x0 if self.fragments > 0 => {
                self.fragments = self.fragments.saturating_add(1);
                if self.fragments > self.limits.max_fragments {
                    return Err(CloseCause::TooManyFragments);
                }
                if fin {
                    self.fragments = 0;
                }
            }
            // A new data message (text, binary or reserved): fragmented unless final.
            0x1..=0x7 => self.fragments = u32::from(!fin),
            // Control frames (and a stray continuation) do not touch the message.
            _ => {}
        }
        self.payload_left = len;
        if len == 0 {
            self.frame_done();
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        if self.fragments == 0 {
            self.started = None;
        }
    }
}

/// The upgraded connection with a [`FrameMeter`] on its read side.
pub(crate) struct WireIo<T> {
    io: T,
    meter: FrameMeter,
    report: std::sync::Arc<WireReport>,
    last: Report,
    violated: bool,
}

impl<T> fmt::Debug for WireIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireIo")
            .field("meter", &self.meter)
            .field("violated", &self.violated)
            .finish_non_exhaustive()
    }
}

impl<T> WireIo<T> {
    pub(crate) fn new(io: T, limits: WireLimits, report: std::sync::Arc<WireReport>) -> Self {
        Self {
            io,
            meter: FrameMeter::new(limits, Instant::now()),
            report,
            last: Report::default(),
            violated: false,
        }
    }

    fn publish(&mut self, report: Report) {
        if report != self.last {
            self.last = report;
            self.report.publish(report);
        }
    }
}

/// How many reads a violated connection discards in one poll before yielding.
const DISCARD_BUDGET: usize = 16;

impl<T: AsyncRead + Unpin> WireIo<T> {
    /// After a violation nothing more goes up: what the peer sends is read and dropped (so
    /// the connection is not reset under the close frame in flight), until the end of the
    /// stream, which does go up.
    fn discard(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        for _ in 0..DISCARD_BUDGET {
            ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            let got = buf.filled().len() - before;
            buf.set_filled(before);
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WireIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.violated {
            return this.discard(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let filled = &buf.filled()[before..];
        if filled.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match this.meter.feed(filled, Instant::now()) {
            Ok(()) => {
                let started = this.meter.started();
                this.publish(Report {
                    violation: None,
                    started,
                });
                Poll::Ready(Ok(()))
            }
            Err((at, cause)) => {
                this.violated = true;
                this.publish(Report {
                    violation: Some(cause),
                    started: None,
                });
                // Pass up the complete frames before the offending one; the driver, woken,
                // sees the violation and closes.
                buf.set_filled(before + at);
                cx.waker().wake_by_ref();
                if at == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WireIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A tungstenite stream seen as a `Stream` + `Sink` of axum [`Message`]s, so the handler's
/// API stays axum's.
#[derive(Debug)]
pub(crate) struct AxumMessages<S>(pub(crate) S);

fn from_tungstenite(msg: ts::Message) -> Option<Result<Message, Error>> {
    let text = |t: tungstenite::Utf8Bytes| Utf8Bytes::try_from(Bytes::from(t)).map_err(Error::new);
    Some(match msg {
        ts::Message::Text(t) => text(t).map(Message::Text),
        ts::Message::Binary(b) => Ok(Message::Binary(b)),
        ts::Message::Ping(p) => Ok(Message::Ping(p)),
        ts::Message::Pong(p) => Ok(Message::Pong(p)),
        ts::Message::Close(None) => Ok(Message::Close(None)),
        ts::Message::Close(Some(frame)) => text(frame.reason).map(|reason| {
            Message::Close(Some(CloseFrame {
                code: frame.code.into(),
                reason,
            }))
        }),
        // Never produced when reading (tungstenite assembles fragments).
        ts::Message::Frame(_) => return None,
    })
}

fn to_tungstenite(msg: Message) -> Result<ts::Message, Error> {
    let text = |t: Utf8Bytes| tungstenite::Utf8Bytes::try_from(Bytes::from(t)).map_err(Error::new);
    Ok(match msg {
        Message::Text(t) => ts::Message::Text(text(t)?),
        Message::Binary(b) => ts::Message::Binary(b),
        Message::Ping(p) => ts::Message::Ping(p),
        Message::Pong(p) => ts::Message::Pong(p),
        Message::Close(None) => ts::Message::Close(None),
        Message::Close(Some(frame)) => ts::Message::Close(Some(ts::CloseFrame {
            code: CloseCode::from(frame.code),
            reason: text(frame.reason)?,
        })),
    })
}

impl<S> Stream for AxumMessages<S>
where
    S: Stream<Item = Result<ts::Message, tungstenite::Error>> + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.0).poll_next(cx)) {
                Some(Ok(msg)) => {
                    if let Some(item) = from_tungstenite(msg) {
                        return Poll::Ready(Some(item));
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(Error::new(err)))),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl<S> Sink<Message> for AxumMessages<S>
where
    S: Sink<ts::Message, Error = tungstenite::Error> + Unpin,
{
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        Pin::new(&mut self.0)
            .start_send(to_tungstenite(item)?)
            .map_err(Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(Error::new)
    }
}

#[cfg(test)]
mod tests;
