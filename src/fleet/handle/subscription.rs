//! [`Subscription`]: one Redis pub/sub channel, subscribed for as long as the subscription
//! lives, resubscribed after every lost connection, with an event each time so that the
//! application catches up with what it missed. The revocation listener runs on it too.

use tokio::sync::{Notify, mpsc};

use super::*;

/// How many events wait for [`Subscription::recv`] before the subscription stops reading
/// from Redis (Redis then buffers, and past its `client-output-buffer-limit` for pub/sub
/// drops the connection: the subscription resubscribes and says so).
const QUEUE: usize = 1024;
/// The first wait before resubscribing, doubled after each failed attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait before resubscribing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscription pings Redis: a half-open connection shows up here, not on
/// the stream of messages.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What a [`Subscription`] delivers, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The channel is subscribed: the first time, and again after every lost connection and
    /// every [`Subscription::resubscribe`]. Every message published from now on is delivered;
    /// those published since the previous subscription may have been missed, so catch up now
    /// from the state the application keeps in Redis (a hash of latest values, markers). If
    /// catching up fails, call [`Subscription::resubscribe`] to get this event again later.
    Subscribed,
    /// A message published on the channel. Payloads that are not UTF-8 are skipped.
    Message(String),
}

/// A subscription to one Redis pub/sub channel through the [`Fleet`]'s Redis, made by
/// [`Fleet::subscribe`]. It runs in the background until dropped: on its own connection, it
/// subscribes, pings Redis while idle, and after a lost connection resubscribes with a capped
/// backoff (50 ms doubling to 1 s), sending [`SubscriptionEvent::Subscribed`] each time it
/// is subscribed again. Messages arrive in the order Redis published them.
///
/// Pub/sub delivers a message only to the subscribers connected when it is published: keep
/// the state in Redis too and catch up on every `Subscribed` (the fleet's revocation
/// listener checks the revocation markers of its live sockets; the stock ticker example
/// reads the latest prices). See the [module docs](crate::fleet#your-own-channels).
pub struct Subscription {
    channel: Arc<str>,
    events: mpsc::Receiver<SubscriptionEvent>,
    resubscribe: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("queued", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Subscribes to `channel` on `runtime`, in the background.
    pub(super) fn spawn(
        runtime: &tokio::runtime::Handle,
        client: Client,
        channel: impl Into<Arc<str>>,
    ) -> Self {
        Self::spawn_pinging(runtime, client, channel, PING_EVERY)
    }

    /// [`spawn`](Self::spawn), pinging an idle connection every `ping_every`.
    fn spawn_pinging(
        runtime: &tokio::runtime::Handle,
        client: Client,
        channel: impl Into<Arc<str>>,
        ping_every: Duration,
    ) -> Self {
        let channel = channel.into();
        let (tx, events) = mpsc::channel(QUEUE);
        let resubscribe = Arc::new(Notify::new());
        let task = runtime.spawn(pump(
            client,
            Arc::clone(&channel),
            tx,
            Arc::clone(&resubscribe),
            ping_every,
        ));
        Self {
            channel,
            events,
            resubscribe,
            task: task.abort_handle(),
        }
    }

    /// The next event: [`SubscriptionEvent::Subscribed`] first, then the channel's messages,
    /// and `Subscribed` again after each resubscription. Waits while there is none (while
    /// Redis is unreachable, say). Cancel-safe. `None` only if the background task died.
    pub async fn recv(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
    }

    /// Drops the connection and subscribes again (after the backoff), which sends
    /// [`SubscriptionEvent::Subscribed`] again: call it when catching up after `Subscribed`
    /// failed. Events already queued are still delivered first.
    pub fn resubscribe(&self) {
        self.resubscribe.notify_one();
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// Why a connection ended.
enum End {
    /// The receiver is gone: stop.
    Closed,
    /// The connection was lost, or the consumer asked to resubscribe.
    Lost {
        /// Whether the connection had worked (a message or a ping came back).
        healthy: bool,
    },
}

/// Keeps `channel` subscribed until the receiver is dropped.
async fn pump(
    client: Client,
    channel: Arc<str>,
    tx: mpsc::Sender<SubscriptionEvent>,
    resubscribe: Arc<Notify>,
    ping_every: Duration,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match serve(&client, &channel, &tx, &resubscribe, ping_every).await {
            Ok(End::Closed) => return,
            Ok(End::Lost { healthy }) => {
                backoff = if healthy {
                    MIN_BACKOFF
                } else {
                    (backoff * 2).min(MAX_BACKOFF)
                };
            }
            Err(e) => {
                tracing::debug!(
                    name: "wsguard.fleet.listener_error",
                    target: "wsguard::fleet",
                    channel = &*channel,
                    error = %e,
                    "subscription lost Redis; retrying"
                );
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// One connection: subscribe, say so, then forward messages until it is lost.
async fn serve(
    client: &Client,
    channel: &str,
    tx: &mpsc::Sender<SubscriptionEvent>,
    resubscribe: &Notify,
    ping_every: Duration,
) -> RedisResult<End> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        RedisResult::Ok(pubsub)
    };
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    let (mut sink, mut stream) = pubsub.split();
    tracing::debug!(
        name: "wsguard.fleet.listening",
        target: "wsguard::fleet",
        channel,
        "subscribed"
    );
    if tx.send(SubscriptionEvent::Subscribed).await.is_err() {
        return Ok(End::Closed);
    }
    let mut healthy = false;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    healthy = true;
                    if let Ok(text) = msg.get_payload::<String>()
                        && tx.send(SubscriptionEvent::Message(text)).await.is_err()
                    {
                        return Ok(End::Closed);
                    }
                }
                None => return Ok(End::Lost { healthy }),
            },
            _ = ping.tick() => {
                // Subscribed (RESP2), Redis answers a `PING` with `["pong", ""]`, not a
                // string: any reply shows the connection works.
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => healthy = true,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(End::Lost { healthy }),
                }
            }
            () = resubscribe.notified() => return Ok(End::Lost { healthy }),
            () = tx.closed() => return Ok(End::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::RedisServer;

    async fn calls(c: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(c)
            .await
            .unwrap();
        let field = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&field))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The pings of an idle subscription keep its connection: it is not remade (with a
    /// `Subscribed` event, so a catch-up, each time) after every ping.
    #[tokio::test]
    async fn an_idle_subscription_pings_without_resubscribing() {
        let redis = RedisServer::start();
        let client = Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut sub = Subscription::spawn_pinging(
            &tokio::runtime::Handle::current(),
            client,
            "idle",
            Duration::from_millis(20),
        );
        let first = tokio::time::timeout(Duration::from_secs(20), sub.recv()).await;
        assert_eq!(first, Ok(Some(SubscriptionEvent::Subscribed)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while calls(&mut c, "ping").await < 5 {
            assert!(tokio::time::Instant::now() < deadline, "no pings");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            calls(&mut c, "subscribe").await,
            1,
            "one subscription, kept"
        );
        assert!(
            sub.events.try_recv().is_err(),
            "no resubscription announced"
        );
    }
}
