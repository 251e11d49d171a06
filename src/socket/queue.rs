//! The bounded per-socket send queue and its slow-consumer policy. Pure logic.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use axum::extract::ws::Message;

use super::SlowConsumer;

/// Payload length of a message, the unit of the byte limits.
pub(crate) fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.as_str().len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(Some(frame)) => 2 + frame.reason.as_str().len(),
        Message::Close(None) => 0,
    }
}

struct Entry {
    key: Option<Arc<str>>,
    len: usize,
    msg: Message,
}

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Appended to the queue.
    Queued,
    /// Queued or replaced after superseding this many queued messages of the same key.
    Conflated(usize),
    /// Appended after dropping this many of the oldest queued messages.
    DroppedOldest(usize),
    /// The queue is full and the policy is to close the socket: nothing was queued.
    Overflow,
}

/// A FIFO bounded by message count and total payload bytes.
///
/// Positions are sequence numbers: entries are removed only from the front and replaced in
/// place, so the entry with sequence `s` sits at index `s - head`.
pub(crate) struct OutQueue {
    items: VecDeque<Entry>,
    keys: HashMap<Arc<str>, u64>,
    head: u64,
    bytes: usize,
    max_len: usize,
    max_bytes: usize,
    policy: SlowConsumer,
}

impl OutQueue {
    pub(crate) fn new(max_len: usize, max_bytes: usize, policy: SlowConsumer) -> Self {
        Self {
            items: VecDeque::new(),
            keys: HashMap::new(),
            head: 0,
            bytes: 0,
            max_len: max_len.max(1),
            max_bytes,
            policy,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn fits(&self, len: usize) -> bool {
        // An empty queue always takes one message, however large, or it could never be sent.
        self.items.is_empty()
            || (self.items.len() < self.max_len && self.bytes.saturating_add(len) <= self.max_bytes)
    }

    /// Queues `msg`, applying the slow-consumer policy when the queue is full. `key` only
    /// matters under [`SlowConsumer::Conflate`]: while there is room every message is queued,
    /// so a reader that keeps up sees each one; once full, a keyed message replaces the newest
    /// queued message with the same key.
    pub(crate) fn push(&mut self, key: Option<Arc<str>>, msg: Message) -> Pushed {
        let len = message_len(&msg);
        if self.fits(len) {
            self.append(key, len, msg);
            return Pushed::Queued;
        }
        match self.policy {
            SlowConsumer::Close => Pushed::Overflow,
            SlowConsumer::Conflate => {
                let only_one = self.items.len() == 1;
                // `seq` is always within the queue: keys are removed with their entries.
                let newest = key
                    .as_ref()
                    .and_then(|key| self.keys.get(key))
                    .and_then(|&seq| self.items.get_mut((seq - self.head) as usize));
                if let Some(entry) = newest
                    && (self.bytes - entry.len + len <= self.max_bytes || only_one)
                {
                    self.bytes = self.bytes - entry.len + len;
                    entry.len = len;
                    entry.msg = msg;
                    return Pushed::Conflated(1);
                }
                // Make room by dropping keyed messages that a newer one of their key supersedes.
                let superseded = self.compact();
                if superseded > 0 && self.fits(len) {
                    self.append(key, len, msg);
                    Pushed::Conflated(superseded)
                } else {
                    Pushed::Overflow
                }
            }
            SlowConsumer::DropOldest => {
                let mut dropped = 0;
                while !self.fits(len) {
                    self.pop();
                    dropped += 1;
                }
                self.append(key, len, msg);
                Pushed::DroppedOldest(dropped)
            }
        }
    }

    /// Queues `msg` whatever the limits (a close frame, so the socket can always end).
    pub(crate) fn push_unbounded(&mut self, msg: Message) {
        let len = message_len(&msg);
        self.append(None, len, msg);
    }

    fn append(&mut self, key: Option<Arc<str>>, len: usize, msg: Message) {
        let seq = self.head + self.items.len() as u64;
        let key = match key {
            Some(key) if self.policy == SlowConsumer::Conflate => {
                self.keys.insert(key.clone(), seq);
                Some(key)
            }
            _ => None,
        };
        self.bytes += len;
        self.items.push_back(Entry { key, len, msg });
    }

    /// Drops every keyed entry that is not the newest of its key; returns how many.
    fn compact(&mut self) -> usize {
        let before = self.items.len();
        let (head, keys) = (self.head, &self.keys);
        let mut seq = head;
        self.items.retain(|entry| {
            let keep = entry
                .key
                .as_ref()
                .is_none_or(|key| keys.get(key) == Some(&seq));
            seq += 1;
            keep
        });
        self.keys.clear();
        self.bytes = 0;
        for (i, entry) in self.items.iter().enumerate() {
            if let Some(key) = &entry.key {
                self.keys.insert(key.clone(), head + i as u64);
            }
            self.bytes += entry.len;
        }
        before - self.items.len()
    }

    /// Whether the message [`pop`](Self::pop) would give is a close frame.
    pub(crate) fn front_is_close(&self) -> bool {
        self.items
            .front()
            .is_some_and(|entry| matches!(entry.msg, Message::Close(_)))
    }

    pub(crate) fn pop(&mut self) -> Option<Message> {
        let entry = self.items.pop_front()?;
        let seq = self.head;
        self.head += 1;
        self.bytes -= entry.len;
        if let Some(key) = entry.key
            && self.keys.get(&key) == Some(&seq)
        {
            self.keys.remove(&key);
        }
        Some(entry.msg)
    }

    pub(crate) fn clear(&mut self) {
        self.head += self.items.len() as u64;
        self.items.clear();
        self.keys.clear();
        self.bytes = 0;
        // Give the memory back: the socket is ending.
        self.items.shrink_to_fit();
        self.keys.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    fn drain(q: &mut OutQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|m| m.to_text().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn policies_when_full() {
        struct Case {
            name: &'static str,
            policy: SlowConsumer,
            pushes: &'static [(Option<&'static str>, &'static str)],
            outcomes: &'static [Pushed],
            left: &'static [&'static str],
        }
        use Pushed::*;
        let cases = [
            Case {
                name: "close refuses the fourth message",
                policy: SlowConsumer::Close,
                pushes: &[(None, "a"), (None, "b"), (None, "c"), (None, "d")],
                outcomes: &[Queued, Queued, Queued, Overflow],
                left: &["a", "b", "c"],
            },
            Case {
                name: "close ignores keys",
                policy: SlowConsumer::Close,
                pushes: &[(Some("k"), "a"), (Some("k"), "b")],
                outcomes: &[Queued, Queued],
                left: &["a", "b"],
            },
            Case {
                name: "drop oldest keeps the newest three",
                policy: SlowConsumer::DropOldest,
                pushes: &[
                    (None, "a"),
                    (None, "b"),
                    (None, "c"),
                    (None, "d"),
                    (None, "e"),
                ],
                outcomes: &[Queued, Queued, Queued, DroppedOldest(1), DroppedOldest(1)],
                left: &["c", "d", "e"],
            },
            Case {
                name: "conflate queues everything while there is room, then replaces the newest of the key",
                policy: SlowConsumer::Conflate,
                pushes: &[
                    (Some("btc"), "btc 1"),
                    (Some("eth"), "eth 1"),
                    (Some("btc"), "btc 2"),
                    (Some("btc"), "btc 3"),
                    (Some("eth"), "eth 2"),
                ],
                outcomes: &[Queued, Queued, Queued, Conflated(1), Conflated(1)],
                left: &["btc 1", "eth 2", "btc 3"],
            },
            Case {
                name: "conflate makes room by dropping superseded messages",
                policy: SlowConsumer::Conflate,
                pushes: &[
                    (Some("btc"), "btc 1"),
                    (Some("btc"), "btc 2"),
                    (Some("btc"), "btc 3"),
                    (None, "news"),
                    (Some("eth"), "eth 1"),
                    (None, "more news"),
                ],
                outcomes: &[Queued, Queued, Queued, Conflated(2), Queued, Overflow],
                left: &["btc 3", "news", "eth 1"],
            },
            Case {
                name: "conflate closes when a new key finds the queue full",
                policy: SlowConsumer::Conflate,
                pushes: &[
                    (Some("a"), "a"),
                    (Some("b"), "b"),
                    (Some("c"), "c"),
                    (Some("d"), "d"),
                ],
                outcomes: &[Queued, Queued, Queued, Overflow],
                left: &["a", "b", "c"],
            },
        ];
        for case in cases {
            let mut q = OutQueue::new(3, 1 << 20, case.policy);
            let outcomes: Vec<_> = case
                .pushes
                .iter()
                .map(|(k, m)| q.push(k.map(Arc::from), text(m)))
                .collect();
            assert_eq!(outcomes, case.outcomes, "{}", case.name);
            assert!(q.len() <= 3, "{}", case.name);
            assert_eq!(drain(&mut q), case.left, "{}", case.name);
            assert_eq!(q.bytes(), 0, "{}", case.name);
        }
    }

    #[test]
    fn conflation_after_pops_finds_the_right_entry() {
        use Pushed::*;
        let mut q = OutQueue::new(4, 1 << 20, SlowConsumer::Conflate);
        for m in ["x 0", "y 0", "x 1", "y 1"] {
            assert_eq!(q.push(Some(m[..1].into()), text(m)), Queued, "{m}");
        }
        assert_eq!(
            q.pop().and_then(|m| m.into_text().ok()).as_deref(),
            Some("x 0")
        );
        assert_eq!(q.push(Some("x".into()), text("x 2")), Queued, "room again");
        assert_eq!(q.push(Some("x".into()), text("x 3")), Conflated(1));
        assert_eq!(q.push(Some("y".into()), text("y 2")), Conflated(1));
        assert_eq!(drain(&mut q), ["y 0", "x 1", "y 2", "x 3"]);
        // A key popped from the queue is queued afresh, not "replaced" into nothing.
        assert_eq!(q.push(Some("x".into()), text("x 4")), Queued);
        assert_eq!(drain(&mut q), ["x 4"]);
    }

    #[test]
    fn byte_bound() {
        let mut q = OutQueue::new(100, 10, SlowConsumer::DropOldest);
        assert_eq!(q.push(None, text("aaaa")), Pushed::Queued);
        assert_eq!(q.push(None, text("bbbb")), Pushed::Queued);
        assert_eq!(q.push(None, text("cccc")), Pushed::DroppedOldest(1));
        assert_eq!(q.bytes(), 8);
        assert_eq!(
            q.push(None, text("a message larger than the bound")),
            Pushed::DroppedOldest(2),
            "an empty queue always takes one message"
        );
        assert_eq!(q.len(), 1);

        let mut closing = OutQueue::new(100, 10, SlowConsumer::Close);
        assert_eq!(closing.push(None, text("12345678")), Pushed::Queued);
        assert_eq!(closing.push(None, text("123")), Pushed::Overflow);
        closing.push_unbounded(Message::Close(None));
        assert_eq!(closing.len(), 2);
        closing.clear();
        assert!(closing.is_empty());
        assert_eq!(closing.bytes(), 0);
    }

    #[test]
    fn conflated_sizes_are_accounted() {
        let mut q = OutQueue::new(1, 100, SlowConsumer::Conflate);
        assert_eq!(q.push(Some("k".into()), text("0123456789")), Pushed::Queued);
        assert_eq!(q.push(Some("k".into()), text("01")), Pushed::Conflated(1));
        assert_eq!(q.bytes(), 2);
        assert_eq!(
            q.push(Some("k".into()), Message::binary(vec![0u8; 50])),
            Pushed::Conflated(1)
        );
        assert_eq!(q.bytes(), 50);
        assert_eq!(q.len(), 1);

        // A replacement may not push the queue past its byte bound.
        let mut q = OutQueue::new(2, 20, SlowConsumer::Conflate);
        assert_eq!(q.push(Some("a".into()), text("0123456789")), Pushed::Queued);
        assert_eq!(q.push(Some("b".into()), text("0123456789")), Pushed::Queued);
        assert_eq!(
            q.push(Some("a".into()), text("01234567890")),
            Pushed::Overflow
        );
        assert_eq!(q.push(Some("a".into()), text("0123")), Pushed::Conflated(1));
        assert_eq!(q.bytes(), 14);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// A message of this many bytes, text or binary, under one of three keys or none.
            Push {
                len: usize,
                key: Option<u8>,
                binary: bool,
            },
            Pop,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0usize..24, proptest::option::of(0u8..3), any::<bool>())
                    .prop_map(|(len, key, binary)| Op::Push { len, key, binary }),
                1 => Just(Op::Pop),
            ]
        }

        fn policy() -> impl Strategy<Value = SlowConsumer> {
            prop_oneof![
                Just(SlowConsumer::Close),
                Just(SlowConsumer::DropOldest),
                Just(SlowConsumer::Conflate),
            ]
        }

        /// A message of `len` bytes whose content names its push: `#<n>` then padding.
        fn message(n: usize, len: usize, binary: bool) -> Message {
            let mut body = format!("#{n}-").into_bytes();
            body.resize(len.max(body.len()), b'.');
            if binary {
                Message::binary(body)
            } else {
                Message::text(String::from_utf8(body).expect("ASCII"))
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Invariant 5: under any sequence of sends and pops, with any count and byte
            /// bounds and any policy, the queue never holds more messages than its count
            /// bound nor more bytes than its byte bound (one message alone may be larger, or
            /// it could never be sent), its byte count is the sum of what it holds, `Close`
            /// never changes the queue when it overflows, and `DropOldest` always keeps the
            /// new message.
            #[test]
            fn the_send_queue_never_exceeds_its_bounds(
                max_len in 1usize..6,
                max_bytes in 0usize..64,
                policy in policy(),
                ops in proptest::collection::vec(op(), 0..60),
            ) {
                let mut q = OutQueue::new(max_len, max_bytes, policy);
                // The FIFO contents as the model sees them, for the `Close` policy.
                let mut model: std::collections::VecDeque<Vec<u8>> = Default::default();
                for (n, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Push { len, key, binary } => {
                            let msg = message(n, len, binary);
                            let data = msg.clone().into_data().to_vec();
                            let before = q.len();
                            let pushed = q.push(key.map(|k| Arc::from(format!("k{k}"))), msg);
                            match (policy, pushed) {
                                (SlowConsumer::Close, Pushed::Queued) => model.push_back(data),
                                (SlowConsumer::Close, Pushed::Overflow) => {
                                    prop_assert_eq!(q.len(), before);
                                }
                                (SlowConsumer::Close, other) => {
                                    prop_assert!(false, "close policy answered {:?}", other);
                                }
                                (SlowConsumer::DropOldest, Pushed::Overflow) => {
                                    prop_assert!(false, "drop-oldest never overflows");
                                }
                                (SlowConsumer::DropOldest, _) => {}
                                (SlowConsumer::Conflate, Pushed::DroppedOldest(_)) => {
                                    prop_assert!(false, "conflate never drops unkeyed messages");
                                }
                                (SlowConsumer::Conflate, _) => {}
                            }
                        }
                        Op::Pop => {
                            let popped = q.pop().map(|m| m.into_data().to_vec());
                            if policy == SlowConsumer::Close {
                                prop_assert_eq!(popped, model.pop_front());
                            }
                        }
                    }
                    prop_assert!(q.len() <= max_len, "{} messages, bound {}", q.len(), max_len);
                    prop_assert!(
                        q.bytes() <= max_bytes || q.len() == 1,
                        "{} bytes in {} messages, bound {}", q.bytes(), q.len(), max_bytes
                    );
                }
                let bytes = q.bytes();
                let held: Vec<Message> = std::iter::from_fn(|| q.pop()).collect();
                prop_assert_eq!(held.iter().map(message_len).sum::<usize>(), bytes);
                prop_assert_eq!(q.bytes(), 0);
                prop_assert!(q.is_empty());
            }

            /// `DropOldest` keeps the newest message at the back whatever it drops.
            #[test]
            fn drop_oldest_keeps_the_newest(
                max_len in 1usize..6,
                max_bytes in 0usize..64,
                lens in proptest::collection::vec(0usize..24, 1..40),
            ) {
                let mut q = OutQueue::new(max_len, max_bytes, SlowConsumer::DropOldest);
                for (n, len) in lens.iter().enumerate() {
                    q.push(None, message(n, *len, false));
                }
                let last = std::iter::from_fn(|| q.pop()).last().map(|m| m.into_data().to_vec());
                let newest = message(lens.len() - 1, lens[lens.len() - 1], false).into_data().to_vec();
                prop_assert_eq!(last, Some(newest));
            }
        }
    }
}
