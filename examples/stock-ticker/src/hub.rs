//! Fan-out: each committed change is serialised once and queued straight on every subscribed
//! socket by [`wsguard::socket::FanOut`], from one task, in `seq` order.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use axum::extract::ws::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use wsguard::socket::{FanOut, Sender};

use crate::{db::Price, metrics::Metrics};

#[derive(Clone)]
pub(crate) struct Hub {
    /// Subscriptions by symbol.
    fanout: FanOut<String>,
    /// The latest price per symbol, as published. Its write lock is held across a publish,
    /// and its read lock across a subscription's snapshot: a subscriber gets every change
    /// after its snapshot, in `seq` order, and none twice.
    latest: Arc<RwLock<BTreeMap<String, Price>>>,
    /// Counts the messages queued on sockets.
    metrics: Arc<Metrics>,
    /// Committed changes, in `seq` order and numbered, to the fan-out task.
    tx: mpsc::Sender<(u64, Price)>,
    /// Changes handed to the fan-out task so far.
    handed: Arc<AtomicU64>,
    /// Changes the fan-out task has applied so far.
    applied: Arc<watch::Sender<u64>>,
}

/// Committed changes the fan-out task may be behind before publishers wait.
const BACKLOG: usize = 256;

#[derive(Serialize)]
struct PriceMessage<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    price: &'a Price,
}

impl Hub {
    /// Starts the fan-out task (call within the runtime).
    pub(crate) fn new(initial: Vec<Price>, metrics: Arc<Metrics>) -> Self {
        let latest = initial.into_iter().map(|p| (p.symbol.clone(), p)).collect();
        let (tx, rx) = mpsc::channel(BACKLOG);
        let hub = Self {
            fanout: FanOut::new(),
            latest: Arc::new(RwLock::new(latest)),
            metrics,
            tx,
            handed: Arc::new(AtomicU64::new(0)),
            applied: Arc::new(watch::Sender::new(0)),
        };
        tokio::spawn(hub.clone().fan_out(rx));
        hub
    }

    /// Called with the database lock held, right after the commit (on a blocking thread):
    /// publication order is `seq` order. Hands the change to the fan-out task and returns;
    /// waits only when that task is [`BACKLOG`] changes behind (the publishers then go at
    /// the fan-out's pace).
    pub(crate) fn publish(&self, price: &Price) {
        let n = self.handed.fetch_add(1, Relaxed) + 1;
        let _ = self.tx.blocking_send((n, price.clone()));
    }

    /// Waits until every change handed to [`publish`](Self::publish) so far is in `latest`
    /// and queued on the subscribers (so a client that connects after `POST /prices`
    /// answered gets the new price in its snapshot).
    pub(crate) async fn flushed(&self) {
        let target = self.handed.load(Relaxed);
        let mut applied = self.applied.subscribe();
        let _ = applied.wait_for(|a| *a >= target).await;
    }

    /// The fan-out task: applies each change to `latest` and queues it, serialised once, on
    /// every subscriber (keyed by symbol: a slow consumer keeps the latest price per symbol).
    /// It runs on a runtime worker, so waking the sockets' drivers schedules them on its
    /// local queue.
    async fn fan_out(self, mut rx: mpsc::Receiver<(u64, Price)>) {
        while let Some((n, price)) = rx.recv().await {
            self.apply(price);
            self.applied.send_replace(n);
        }
    }

    fn apply(&self, price: Price) {
        {
            let mut latest = self.latest.write().unwrap_or_else(PoisonError::into_inner);
            if latest
                .get(&price.symbol)
                .is_some_and(|p| p.seq >= price.seq)
            {
                // Already published (a fleet peer's change seen twice).
                return;
            }
            let message = PriceMessage {
                r#type: "price",
                price: &price,
            };
            let Ok(json) = serde_json::to_string(&message) else {
                return;
            };
            let published = self.fanout.publish_keyed(
                price.symbol.as_str(),
                price.symbol.as_str(),
                Message::text(json),
            );
            latest.insert(price.symbol.clone(), price);
            drop(latest);
            self.metrics
                .messages_pushed
                .fetch_add(published.queued as u64, Relaxed);
        }
    }

    /// Subscribes `sender` to `symbols` (all known symbols if `None`) and returns the
    /// snapshot of their latest prices, which `send` queues on the socket before any later
    /// change can be. Unknown symbols are ignored (the session checks them first).
    pub(crate) fn subscribe(
        &self,
        sender: &Sender,
        symbols: Option<&[String]>,
        send: impl FnOnce(&[Price]) -> bool,
    ) -> bool {
        let latest = self.latest.read().unwrap_or_else(PoisonError::into_inner);
        let prices: Vec<Price> = match symbols {
            None => latest.values().cloned().collect(),
            Some(symbols) => latest
                .values()
                .filter(|p| symbols.contains(&p.symbol))
                .cloned()
                .collect(),
        };
        if !send(&prices) {
            return false;
        }
        for price in &prices {
            self.fanout.subscribe(price.symbol.clone(), sender);
        }
        true
    }

    pub(crate) fn unsubscribe(&self, sender: &Sender, symbols: &[String]) {
        for symbol in symbols {
            self.fanout.unsubscribe(symbol.as_str(), sender);
        }
    }

    pub(crate) fn latest(&self) -> Vec<Price> {
        self.latest
            .read()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn is_symbol(&self, symbol: &str) -> bool {
        self.latest
            .read()
            .map(|l| l.contains_key(symbol))
            .unwrap_or(false)
    }
}
