//! Counting on the wire. tungstenite assembles fragments and answers control frames inside,
//! so a peer sending endless empty continuation frames never shows up as a message. The
//! [`WireIo`] adapter sits under tungstenite and parses frame headers as the bytes pass (the
//! payload is skipped, not copied): it counts frames (data, continuation and control alike)
//! in a token bucket, fragments per message, and records when the message in progress started,
//! for the driver's deadline. On a violation it stops passing bytes up and reports the cause
//! in a [`WireReport`], where the driver sees it.
//!
//! It is also where the read buffer lives. The connection is read in [`LEND`]-byte steps into
//! a buffer lent by a per-thread pool, and only for as long as bytes read are not yet passed
//! up: an idle socket holds none, a large message arrives in as few reads as with a large
//! buffer of its own, and tungstenite's own per-socket buffer can stay small (its reads are
//! then copies from the lent buffer, not system calls).

use std::{
    cell::RefCell,
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
use tokio_tungstenite::WebSocketStream;
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
    /// Limits are counted (until the first violation; after it, frames are only followed).
    counting: bool,
    /// The frame in progress is a close frame.
    in_close: bool,
    /// A whole close frame from the peer has passed.
    close_seen: bool,
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
            counting: true,
            in_close: false,
            close_seen: false,
        }
    }

    /// Whether a whole close frame from the peer has passed.
    pub(crate) fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// When the unfinished frame or message started.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Counts the frames in `bytes`, the next bytes from the peer. On the first violation,
    /// returns where in `bytes` the offending frame starts (0 if it started in an earlier
    /// chunk) and the cause. After it the meter counts nothing more but still follows the
    /// frames (to see the peer's close frame while the connection is drained).
    pub(crate) fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<(), (usize, CloseCause)> {
        let mut i = 0;
        let mut frame_start = 0;
        let mut violation = None;
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
            if self.have >= 2
                && self.have == header_len(self.header[1])
                && let Err(cause) = self.on_header(now)
                && violation.is_none()
            {
                self.counting = false;
                violation = Some((frame_start, cause));
            }
        }
        violation.map_or(Ok(()), Err)
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
        self.payload_left = len;
        self.in_close = b0 & 0x0F == 0x8;
        let counted = if self.counting {
            self.count(b0, now)
        } else {
            Ok(())
        };
        if len == 0 {
            self.frame_done();
        }
        counted
    }

    /// Counts the frame whose header starts with `b0` against the limits.
    fn count(&mut self, b0: u8, now: Instant) -> Result<(), CloseCause> {
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
        Ok(())
    }

    fn frame_done(&mut self) {
        if self.in_close {
            self.in_close = false;
            self.close_seen = true;
        }
        if self.fragments == 0 {
            self.started = None;
        }
    }
}

/// The upgraded connection with a [`FrameMeter`] on its read side.
pub(crate) struct WireIo<T> {
    io: T,
    /// Bytes read from `io` and not yet passed up, in a lent buffer.
    unread: Option<Unread>,
    meter: FrameMeter,
    report: std::sync::Arc<WireReport>,
    last: Report,
    violated: bool,
    /// Bytes the drain may still read and drop.
    drain_left: u64,
    /// The drain is over: the peer's close frame passed, the stream ended or failed, or the
    /// budget ran out.
    drained: bool,
}

impl<T> fmt::Debug for WireIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireIo")
            .field("unread", &self.unread.as_ref().map(Unread::len))
            .field("meter", &self.meter)
            .field("violated", &self.violated)
            .field("drain_left", &self.drain_left)
            .field("drained", &self.drained)
            .finish_non_exhaustive()
    }
}

impl<T> WireIo<T> {
    /// The adapter over `io`. Once the protocol above gives up on the connection, at most
    /// `drain_bytes` more are read and dropped (see [`poll_drain`](Self::poll_drain)).
    pub(crate) fn new(
        io: T,
        limits: WireLimits,
        drain_bytes: u64,
        report: std::sync::Arc<WireReport>,
    ) -> Self {
        Self {
            io,
            unread: None,
            meter: FrameMeter::new(limits, Instant::now()),
            report,
            last: Report::default(),
            violated: false,
            drain_left: drain_bytes,
            drained: false,
        }
    }

    fn publish(&mut self, report: Report) {
        if report != self.last {
            self.last = report;
            self.report.publish(report);
        }
    }
}

/// The size of a lent read buffer: the most one read of the connection takes.
pub(crate) const LEND: usize = 64 * 1024;

/// Free buffers a thread keeps for lending; more are freed when given back.
const KEEP: usize = 4;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`LEND`]-byte buffer from this thread's pool, or a new one.
fn borrow_buffer() -> Box<[u8]> {
    FREE.try_with(|free| free.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; LEND].into_boxed_slice())
}

/// Gives `buf` back to this thread's pool (or frees it).
fn give_back(buf: Box<[u8]>) {
    let _ = FREE.try_with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

/// Bytes read from the connection and not yet passed up, in a lent buffer (given back when
/// dropped).
struct Unread {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
}

impl Unread {
    fn bytes(&self) -> &[u8] {
        self.buf
            .as_deref()
            .map_or(&[], |buf| &buf[self.pos..self.end])
    }

    fn len(&self) -> usize {
        self.end - self.pos
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(buf);
        }
    }
}

/// How many reads a drain makes in one poll before yielding.
const DRAIN_READS: usize = 16;

impl<T: AsyncRead + Unpin> WireIo<T> {
    /// Reads at most `max` bytes of the connection into a lent buffer, unless bytes are still
    /// unread there. Ready with `Ok(false)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<bool>> {
        if self.unread.is_some() {
            return Poll::Ready(Ok(true));
        }
        let mut lent = Unread {
            buf: Some(borrow_buffer()),
            pos: 0,
            end: 0,
        };
        let Some(buf) = lent.buf.as_deref_mut() else {
            return Poll::Ready(Ok(false));
        };
        let max = max.clamp(1, buf.len());
        let mut read = ReadBuf::new(&mut buf[..max]);
        // On `Pending` or an error the buffer goes back to the pool with `lent`.
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        lent.end = read.filled().len();
        if lent.end == 0 {
            return Poll::Ready(Ok(false));
        }
        self.unread = Some(lent);
        Poll::Ready(Ok(true))
    }

    /// Moves up to `buf.remaining()` unread bytes into `buf`, giving the lent buffer back once
    /// they are all passed up.
    fn take_unread(&mut self, buf: &mut ReadBuf<'_>) {
        if let Some(unread) = &mut self.unread {
            let n = unread.len().min(buf.remaining());
            buf.put_slice(&unread.bytes()[..n]);
            unread.pos += n;
            if unread.len() == 0 {
                self.unread = None;
            }
        }
    }

    /// Drops the unread bytes (the protocol will never see them): followed by the meter and
    /// counted against the drain.
    fn discard_unread(&mut self) {
        if let Some(unread) = self.unread.take() {
            let rest = unread.bytes();
            self.drain_left = self.drain_left.saturating_sub(rest.len() as u64);
            let _ = self.meter.feed(rest, Instant::now());
        }
    }

    /// The lingering close, below the protocol: reads what the peer sends and drops it (so
    /// that the connection is not reset, losing the close frame in flight, for unread data),
    /// until the peer's close frame has passed, the stream ends or fails, or the byte budget
    /// is spent. Ready once the drain is over.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..DRAIN_READS {
            // Bytes read and not passed up come first: they precede anything still to read.
            self.discard_unread();
            if self.drained || self.meter.close_seen() || self.drain_left == 0 {
                self.drained = true;
                return Poll::Ready(());
            }
            let budget = usize::try_from(self.drain_left).unwrap_or(usize::MAX);
            match ready!(self.poll_fill(cx, budget)) {
                Ok(true) => {}
                _ => self.drained = true,
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
            // Nothing more goes up, not even the end of the stream (the protocol would take
            // it for the peer's going away and write no close frame): the driver, woken at
            // the violation, writes its close and drains the connection below the protocol.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if this.unread.is_none() && buf.remaining() >= LEND {
            // A buffer as large as a lent one: read into it directly.
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        } else if ready!(this.poll_fill(cx, LEND))? {
            this.take_unread(buf);
        }
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
                // The bytes after the offending frame's start are dropped here: they count
                // against the drain, as do those read and not passed up yet.
                this.drain_left = this.drain_left.saturating_sub((filled.len() - at) as u64);
                this.discard_unread();
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

/// The connection under the protocol, for the end of a lingering close.
pub(crate) trait RawConnection {
    /// Reads and drops what the peer sends, below the protocol (which may have refused the
    /// input and cannot be read any more), until its close frame, the end of the stream, or
    /// the byte budget. Ready once over.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Shuts the write side down (TCP FIN). Ready once done or failed.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl<T> RawConnection for AxumMessages<WebSocketStream<WireIo<T>>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0.get_mut().io)
            .poll_shutdown(cx)
            .map(|_| ())
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
