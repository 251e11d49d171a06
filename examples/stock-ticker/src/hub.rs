//! Fan-out: each committed change is serialised once and queued straight on every subscribed
//! socket by [`wsguard::socket::FanOut`].

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock, atomic::Ordering::Relaxed},
};

use axum::extract::ws::Message;
use serde::Serialize;
use wsguard::socket::{FanOut, Sender};

use crate::{db::Price, metrics::Metrics};

#[derive(Clone)]
pub(crate) struct Hub {
    /// Subscriptions by symbol.
    fanout: FanOut<String>,
    /// The latest price per symbol. Its write lock is held across a publish, and its read
    /// lock across a subscription's snapshot: a subscriber gets every change after its
    /// snapshot, in `seq` order, and none twice.
    latest: Arc<RwLock<BTreeMap<String, Price>>>,
    /// Counts the messages queued on sockets.
    metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct PriceMessage<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    price: &'a Price,
}

impl Hub {
    pub(crate) fn new(initial: Vec<Price>, metrics: Arc<Metrics>) -> Self {
        let latest = initial.into_iter().map(|p| (p.symbol.clone(), p)).collect();
        Self {
            fanout: FanOut::new(),
            latest: Arc::new(RwLock::new(latest)),
            metrics,
        }
    }

    /// Called with the database lock held, right after the commit: publication order is
    /// `seq` order. Serialises once; the fan-out queues the bytes on every subscriber, keyed
    /// by symbol (a slow consumer keeps the latest price per symbol).
    pub(crate) fn publish(&self, price: &Price) {
        let mut latest = self.latest.write().unwrap_or_else(PoisonError::into_inner);
        if latest
            .get(&price.symbol)
            .is_some_and(|p| p.seq >= price.seq)
        {
            // Already published (a fleet peer's change seen twice).
            return;
        }
        latest.insert(price.symbol.clone(), price.clone());
        let message = PriceMessage {
            r#type: "price",
            price,
        };
        let Ok(json) = serde_json::to_string(&message) else {
            return;
        };
        let published = self.fanout.publish_keyed(
            price.symbol.as_str(),
            price.symbol.as_str(),
            Message::text(json),
        );
        drop(latest);
        self.metrics
            .messages_pushed
            .fetch_add(published.queued as u64, Relaxed);
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
