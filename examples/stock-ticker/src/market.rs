//! The market simulator: a random walk of prices written to the database.

use std::time::Duration;

use crate::{db::Db, fleet::TickerFleet, hub::Hub};

/// A small xorshift generator: the simulator needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Changes one random symbol's price `tick_hz` times per second, forever; in fleet mode
/// through Redis, so every instance sees it.
pub(crate) async fn run(db: Db, hub: Hub, fleet: Option<TickerFleet>, tick_hz: f64) {
    if !(tick_hz > 0.0 && tick_hz.is_finite()) {
        tracing::info!("market simulator off (--tick-hz {tick_hz})");
        return;
    }
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / tick_hz));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = Rng::new();
    let mut failing = false;
    loop {
        interval.tick().await;
        let prices = hub.latest();
        if prices.is_empty() {
            continue;
        }
        let pick = &prices[(rng.next_u64() % prices.len() as u64) as usize];
        // A step of up to ±0.5 %, rounded to cents, never below one cent.
        let step = 1.0 + (rng.unit() - 0.5) * 0.01;
        let price = ((pick.price * step) * 100.0).round().max(1.0) / 100.0;
        let symbol = pick.symbol.clone();
        if let Some(fleet) = &fleet {
            match fleet.publish(&symbol, price).await {
                // Logged once per outage, not once per tick.
                Err(e) if !failing => {
                    tracing::warn!("simulator could not publish a price: {e}");
                    failing = true;
                }
                Err(_) => {}
                Ok(_) => failing = false,
            }
            continue;
        }
        let (db, hub) = (db.clone(), hub.clone());
        let result =
            tokio::task::spawn_blocking(move || db.set_price(&symbol, price, |p| hub.publish(p)))
                .await;
        if let Ok(Err(e)) = result {
            tracing::warn!("simulator could not write a price: {e}");
        }
    }
}
