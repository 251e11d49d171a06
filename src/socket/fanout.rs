//! [`FanOut`]: publish once to every guarded socket subscribed to a key.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Arc, PoisonError, RwLock, Weak},
};

use axum::extract::ws::Message;

use super::guarded::{Sender, Shared};

/// Serialise once, queue everywhere: a publish places one message straight into the send
/// queue of every socket subscribed to its key.
///
/// Each subscriber's bounded send queue and [`SlowConsumer`](super::SlowConsumer) policy
/// apply exactly as for [`Sender::send`] (close with `1013`, drop the oldest, or conflate by
/// key with [`publish_keyed`](Self::publish_keyed)); the publish wakes only that socket's
/// driver, which writes the queue to the wire. It never waits on a socket: a slow one is
/// dealt with by its own policy, and the publisher moves on. The message is not copied per
/// socket (axum's `Message::Text` shares its bytes).
///
/// Subscriptions end with the socket: the fan-out holds no strong reference to a socket, and
/// a socket that has ended (or that its policy closed) is removed at the next publish to the
/// key, or by [`unsubscribe`](Self::unsubscribe). Cloning a `FanOut` gives another handle to
/// the same subscriptions.
///
/// Order: messages published to one key are queued on each subscriber in publication order.
/// A subscriber that must not miss or double a message between a snapshot and the first
/// update (a "latest state, then changes" protocol) should send its snapshot and subscribe
/// while holding the lock under which the application publishes; see the stock-ticker
/// example.
///
/// ```
/// use axum::extract::ws::Message;
/// use wsguard::socket::{FanOut, GuardedSocket};
///
/// async fn session(prices: FanOut<String>, mut socket: GuardedSocket) {
///     prices.subscribe("AAPL".to_owned(), &socket.sender());
///     // The driver writes the prices; this task only reads the client's messages.
///     while let Some(Ok(_)) = socket.recv().await {}
/// }
///
/// fn publish(prices: &FanOut<String>) {
///     let json = r#"{"symbol":"AAPL","price":189.5}"#;
///     let published = prices.publish_keyed("AAPL", "AAPL", Message::text(json));
///     assert_eq!(published.queued, 0); // nobody is subscribed in this example
/// }
/// # publish(&FanOut::new());
/// ```
pub struct FanOut<K> {
    topics: Arc<RwLock<HashMap<K, Topic>>>,
}

/// The subscribers of one key, by the address of their shared state (which a `Weak` keeps
/// allocated, so an address is never reused while it is listed).
#[derive(Default)]
struct Topic {
    subscribers: HashMap<usize, Weak<Shared>>,
}

/// What one [`FanOut::publish`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Sockets the message was queued on (conflated or not).
    pub queued: usize,
    /// Subscriptions removed because their socket had ended or its policy closed it (for
    /// instance a slow consumer closed with `1013` by this publish).
    pub ended: usize,
}

impl<K> Clone for FanOut<K> {
    fn clone(&self) -> Self {
        Self {
            topics: self.topics.clone(),
        }
    }
}

impl<K> Default for FanOut<K> {
    fn default() -> Self {
        Self {
            topics: Arc::new(RwLock::new(HashMap::new())),
        }
    }
}

impl<K> fmt::Debug for FanOut<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("FanOut")
            .field("keys", &topics.len())
            .finish_non_exhaustive()
    }
}

fn id(shared: &Arc<Shared>) -> usize {
    Arc::as_ptr(shared) as usize
}

impl<K: Eq + Hash> FanOut<K> {
    /// A fan-out with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes the socket of `socket` to `key`. Returns `false` if it already was (a
    /// socket is listed once per key) or has ended.
    pub fn subscribe(&self, key: K, socket: &Sender) -> bool {
        let shared = socket.shared();
        if !socket.is_open() {
            return false;
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let topic = topics.entry(key).or_default();
        if topic.subscribers.contains_key(&id(shared)) {
            return false;
        }
        topic.subscribers.insert(id(shared), Arc::downgrade(shared));
        true
    }

    /// Unsubscribes the socket of `socket` from `key`; returns whether it was subscribed.
    /// Messages already queued on the socket are still sent.
    pub fn unsubscribe<Q>(&self, key: &Q, socket: &Sender) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let Some(topic) = topics.get_mut(key) else {
            return false;
        };
        let removed = topic.subscribers.remove(&id(socket.shared())).is_some();
        if topic.subscribers.is_empty() {
            topics.remove(key);
        }
        removed
    }

    /// Whether the socket of `socket` is subscribed to `key`.
    pub fn is_subscribed<Q>(&self, key: &Q, socket: &Sender) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics
            .get(key)
            .is_some_and(|t| t.subscribers.contains_key(&id(socket.shared())))
    }

    /// Subscriptions to `key`, including sockets that have ended since the last publish.
    pub fn subscribers<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.get(key).map_or(0, |t| t.subscribers.len())
    }

    /// Queues `msg` on every socket subscribed to `key`, under each socket's slow-consumer
    /// policy; wakes only their drivers. Never waits on a socket.
    pub fn publish<Q>(&self, key: &Q, msg: Message) -> Published
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.publish_inner(key, None, msg)
    }

    /// Queues `msg` under the conflation key `conflate` on every socket subscribed to `key`:
    /// under [`SlowConsumer::Conflate`](super::SlowConsumer::Conflate) a full queue replaces
    /// its newest message with the same conflation key; see [`Sender::send_keyed`].
    pub fn publish_keyed<Q>(
        &self,
        key: &Q,
        conflate: impl Into<Arc<str>>,
        msg: Message,
    ) -> Published
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.publish_inner(key, Some(conflate.into()), msg)
    }

    fn publish_inner<Q>(&self, key: &Q, conflate: Option<Arc<str>>, msg: Message) -> Published
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut published = Published::default();
        {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            let Some(topic) = topics.get(key) else {
                return published;
            };
            for weak in topic.subscribers.values() {
                let queued = weak
                    .upgrade()
                    .is_some_and(|shared| shared.enqueue(conflate.clone(), msg.clone()).is_ok());
                if queued {
                    published.queued += 1;
                } else {
                    published.ended += 1;
                }
            }
        }
        if published.ended > 0 {
            self.prune(key);
        }
        published
    }

    /// Removes the subscriptions of `key` whose socket no longer accepts messages.
    fn prune<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(topic) = topics.get_mut(key) {
            topic
                .subscribers
                .retain(|_, weak| weak.upgrade().is_some_and(|shared| shared.is_open()));
            if topic.subscribers.is_empty() {
                topics.remove(key);
            }
        }
    }
}
