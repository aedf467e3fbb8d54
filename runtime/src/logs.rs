//! Guest output: stdout and stderr of every instance of an app are captured
//! line by line into a bounded per-app ring buffer (what a logs API serves)
//! and emitted as `tracing` events tagged with the app — at most
//! [`TRACE_RATE`] lines a second per app (after a burst of [`TRACE_BURST`]),
//! so a guest that prints in a loop cannot flood the node's own log; what is
//! held back stays in the app's buffer and is counted in one event.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Default lines kept per app.
pub const DEFAULT_LOG_LINES: usize = 1000;
/// Longest line kept; longer output is split. Bounds memory per line and
/// stops one guest from flooding the log with a single huge line.
pub const MAX_LINE_BYTES: usize = 4096;

/// Lines per second an app may add to the node's own log, once its burst
/// is spent.
pub const TRACE_RATE: u32 = 100;
/// Lines an app may add to the node's own log at once.
pub const TRACE_BURST: u32 = 500;

/// A token bucket: how many of an app's lines reach the node's own log.
#[derive(Debug)]
struct TraceBudget {
    tokens: u32,
    /// When the bucket was last refilled (whole tokens only).
    refilled: Instant,
    /// Lines held back since the last one let through.
    held_back: u64,
}

/// What [`TraceBudget::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Trace the line; `held_back` lines before it were not traced.
    Yes { held_back: u64 },
    /// Do not trace it.
    No,
}

impl TraceBudget {
    fn new(now: Instant) -> Self {
        Self {
            tokens: TRACE_BURST,
            refilled: now,
            held_back: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_millis() * u128::from(TRACE_RATE) / 1000;
        if earned > 0 {
            self.tokens = u32::try_from(earned)
                .unwrap_or(u32::MAX)
                .saturating_add(self.tokens)
                .min(TRACE_BURST);
            // Keep the remainder: only the time the tokens paid for passes.
            let paid = u64::try_from(earned).unwrap_or(u64::MAX) * 1000 / u64::from(TRACE_RATE);
            self.refilled += std::time::Duration::from_millis(paid);
        }
        if self.tokens == 0 {
            self.held_back += 1;
            return Admit::No;
        }
        self.tokens -= 1;
        Admit::Yes {
            held_back: std::mem::take(&mut self.held_back),
        }
    }
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of guest output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Monotonic sequence number within the app (for `follow` and gaps).
    pub seq: u64,
    /// When the line was completed.
    pub time: SystemTime,
    /// Which stream it came from.
    pub stream: Stream,
    /// The text, lossily decoded as UTF-8, without the newline.
    pub line: String,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

/// A bounded ring of an app's most recent output lines.
#[derive(Debug)]
pub struct LogBuffer {
    app: Arc<str>,
    capacity: usize,
    ring: Mutex<Ring>,
    budget: Mutex<TraceBudget>,
}

impl LogBuffer {
    /// An empty buffer for `app` that keeps the last `capacity` lines.
    pub fn new(app: &str, capacity: usize) -> Self {
        Self {
            app: app.into(),
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                next_seq: 0,
            }),
            budget: Mutex::new(TraceBudget::new(Instant::now())),
        }
    }

    /// The app whose output this is.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Whether one more line about this app may go to the node's own log
    /// (guest output and the host's notes share the budget). When lines
    /// were held back before this one, says how many, once.
    pub fn may_trace(&self) -> bool {
        let Ok(mut budget) = self.budget.lock() else {
            return false;
        };
        match budget.admit(Instant::now()) {
            Admit::No => false,
            Admit::Yes { held_back: 0 } => true,
            Admit::Yes { held_back } => {
                tracing::warn!(
                    app = %self.app,
                    held_back,
                    "app logging faster than the node traces: lines held back (kept in the app's log)"
                );
                true
            }
        }
    }

    fn push(&self, stream: Stream, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes).into_owned();
        if self.may_trace() {
            match stream {
                Stream::Stdout => tracing::info!(app = %self.app, stream = "stdout", "{line}"),
                Stream::Stderr => tracing::warn!(app = %self.app, stream = "stderr", "{line}"),
            }
        }
        self.append(stream, line);
    }

    /// Keeps `line` without a tracing event of its own.
    fn append(&self, stream: Stream, line: String) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.lines.len() == self.capacity {
            ring.lines.pop_front();
        }
        ring.lines.push_back(LogLine {
            seq,
            time: SystemTime::now(),
            stream,
            line,
        });
    }

    /// Adds a line the host writes about the app (e.g. a denied access), so
    /// its owner sees it with `skiff logs`. The host logs its own structured
    /// event, so this one is not also traced as guest output.
    pub fn note(&self, line: &str) {
        self.append(Stream::Stderr, line.to_owned());
    }

    /// The lines kept, oldest first, with sequence numbers at or after `since`.
    pub fn lines_since(&self, since: u64) -> Vec<LogLine> {
        self.ring
            .lock()
            .map(|ring| {
                ring.lines
                    .iter()
                    .filter(|l| l.seq >= since)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A writer for one instance's `stream`. Partial lines are kept per
    /// writer, so concurrent instances never interleave within a line.
    pub fn writer(self: &Arc<Self>, stream: Stream) -> GuestOutput {
        GuestOutput {
            buffer: self.clone(),
            stream,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

/// A guest's stdout or stderr: implements WASI's output stream traits and
/// forwards complete lines to the app's [`LogBuffer`].
#[derive(Clone)]
pub struct GuestOutput {
    buffer: Arc<LogBuffer>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    fn write_bytes(&self, mut bytes: &[u8]) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) if pending.len() + i <= MAX_LINE_BYTES => {
                    pending.extend_from_slice(&bytes[..i]);
                    self.buffer.push(self.stream, &pending);
                    pending.clear();
                    bytes = &bytes[i + 1..];
                }
                _ => {
                    let room = MAX_LINE_BYTES - pending.len();
                    let take = bytes.len().min(room);
                    pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if pending.len() == MAX_LINE_BYTES {
                        self.buffer.push(self.stream, &pending);
                        pending.clear();
                    }
                }
            }
        }
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last clone flushes an unterminated final line.
        if Arc::strong_count(&self.pending) == 1
            && let Ok(pending) = self.pending.lock()
            && !pending.is_empty()
        {
            self.buffer.push(self.stream, &pending);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always ready; the ring buffer bounds what is kept.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(buf: &LogBuffer) -> Vec<String> {
        buf.lines_since(0).into_iter().map(|l| l.line).collect()
    }

    #[test]
    fn lines_are_split_bounded_and_flushed_on_drop() {
        let buf = Arc::new(LogBuffer::new("app", 3));
        let out = buf.writer(Stream::Stdout);
        out.write_bytes(b"one\ntw");
        out.write_bytes(b"o\nthree\nfour\nfive");
        drop(out);
        // Capacity 3: the oldest lines were dropped, the tail was flushed.
        assert_eq!(texts(&buf), ["three", "four", "five"]);
        assert_eq!(buf.lines_since(4).len(), 1);
    }

    #[test]
    fn the_trace_budget_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut budget = TraceBudget::new(start);
        let burst = (0..TRACE_BURST * 2)
            .filter(|_| budget.admit(start) != Admit::No)
            .count();
        assert_eq!(burst, TRACE_BURST as usize);
        // 10 ms later one more token (at 100/s), which reports what was held.
        let later = start + std::time::Duration::from_millis(10);
        assert_eq!(
            budget.admit(later),
            Admit::Yes {
                held_back: u64::from(TRACE_BURST)
            }
        );
        assert_eq!(budget.admit(later), Admit::No);
        // A second later: the rate, not the burst.
        let second = later + std::time::Duration::from_secs(1);
        let admitted = (0..TRACE_BURST)
            .filter(|_| budget.admit(second) != Admit::No)
            .count();
        assert_eq!(admitted, TRACE_RATE as usize);
        // Long quiet refills the burst, no more.
        let quiet = second + std::time::Duration::from_secs(3600);
        let admitted = (0..TRACE_BURST * 2)
            .filter(|_| budget.admit(quiet) != Admit::No)
            .count();
        assert_eq!(admitted, TRACE_BURST as usize);
    }

    #[test]
    fn flooding_keeps_every_line_in_the_buffer_bounded() {
        let buf = LogBuffer::new("flood", 1000);
        for i in 0..20_000 {
            buf.push(Stream::Stdout, format!("line {i}").as_bytes());
        }
        let lines = buf.lines_since(0);
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999].line, "line 19999");
    }

    #[test]
    fn long_lines_are_split() {
        let buf = Arc::new(LogBuffer::new("app", 10));
        let out = buf.writer(Stream::Stderr);
        out.write_bytes(&vec![b'x'; MAX_LINE_BYTES + 10]);
        drop(out);
        let lines = texts(&buf);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].len(), 10);
    }
}
