//! Fan-out: each committed change is serialised once and its bytes shared by every socket.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::db::Price;

/// One update as it goes on the wire, serialised once.
#[derive(Clone, Debug)]
pub(crate) struct Update {
    pub(crate) symbol: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) json: Utf8Bytes,
}

#[derive(Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Update>,
    latest: Arc<RwLock<BTreeMap<String, Price>>>,
}

#[derive(Serialize)]
struct PriceMessage<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    price: &'a Price,
}

impl Hub {
    pub(crate) fn new(initial: Vec<Price>) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let latest = initial.into_iter().map(|p| (p.symbol.clone(), p)).collect();
        Self {
            tx,
            latest: Arc::new(RwLock::new(latest)),
        }
    }

    /// Called with the database lock held, right after the commit: publication order is
    /// `seq` order.
    pub(crate) fn publish(&self, price: &Price) {
        if let Ok(mut latest) = self.latest.write() {
            latest.insert(price.symbol.clone(), price.clone());
        }
        let message = PriceMessage {
            r#type: "price",
            price,
        };
        let Ok(json) = serde_json::to_string(&message) else {
            return;
        };
        // No receivers is fine: nobody is connected.
        let _ = self.tx.send(Update {
            symbol: Arc::from(price.symbol.as_str()),
            seq: price.seq,
            json: Utf8Bytes::from(json),
        });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.tx.subscribe()
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
