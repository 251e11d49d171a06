//! Fleet mode (`--redis URL`): several ticker instances behind a load balancer share one
//! Redis for handshake rate limits, socket quotas, revocation and prices.
//!
//! Prices: a change made on any instance runs one Lua script that takes the symbol's next
//! `seq` (`INCR`), stores the price as the symbol's latest and publishes it, atomically, so
//! Redis publishes each symbol's changes in `seq` order. Every instance (the writer too)
//! applies what it receives, in that order, to its own SQLite file and hub, through a
//! subscription of the fleet handle (`Fleet::subscribe`, which resubscribes after lost
//! connections); on every (re)subscription it catches up from the stored latest prices. The
//! ticker's data (seq counters, latest prices, the script) goes over its own `redis`
//! connection, not the fleet's, which wsguard keeps to itself. The login ticket secret is
//! not kept in Redis (whoever reads it could sign in as anyone): the operator gives every
//! instance the same one (`--ticket-secret-file` or `TICKER_TICKET_SECRET`), so a token from
//! one instance works on all.

//!
//! Built only with the `redis` feature; without it `--redis` is refused at start-up.

use std::time::Duration;

/// What `--redis-failure` accepts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum OnFailure {
    /// Enforce the limits per instance while Redis is down, and log.
    Fallback,
    /// Refuse WebSocket handshakes with 503 while Redis is down.
    Refuse,
}

/// The fleet settings from the command line.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) on_failure: OnFailure,
}

#[cfg(feature = "redis")]
pub(crate) use enabled::TickerFleet;

#[cfg(not(feature = "redis"))]
pub(crate) use disabled::TickerFleet;

#[cfg(not(feature = "redis"))]
mod disabled {

    use crate::{
        db::{Db, Price},
        hub::Hub,
    };

    /// Never built: this binary has no fleet mode.
    #[derive(Clone)]
    pub(crate) struct TickerFleet {
        never: std::convert::Infallible,
    }

    impl TickerFleet {
        pub(crate) async fn connect(
            _: &super::Options,
        ) -> Result<Self, Box<dyn std::error::Error>> {
            Err(
                "--redis needs the `redis` feature: cargo run -p stock-ticker --features redis"
                    .into(),
            )
        }
        pub(crate) async fn prepare(
            &self,
            _: &Db,
            _: &Hub,
        ) -> Result<(), Box<dyn std::error::Error>> {
            match self.never {}
        }
        pub(crate) async fn publish(&self, _: &str, _: f64) -> Result<Price, String> {
            match self.never {}
        }
        pub(crate) fn revocations(&self) -> wsguard::revoke::Revocations {
            match self.never {}
        }
    }
}

#[cfg(feature = "redis")]
mod enabled {
    use std::{future::Future, sync::LazyLock, time::Duration};

    use redis::{
        Client, Script,
        aio::{ConnectionManager, ConnectionManagerConfig},
    };
    use serde::Deserialize;
    use wsguard::fleet::{FailurePolicy, Fleet, SubscriptionEvent};

    use super::{OnFailure, Options};
    use crate::{
        db::{Db, Price},
        hub::Hub,
    };

    /// The fleet handle (limits, revocation, the price channel's subscription) and the
    /// ticker's own connection to the same Redis for its data (the seq counters, the latest
    /// prices, the publish script).
    #[derive(Clone)]
    pub(crate) struct TickerFleet {
        fleet: Fleet,
        data: ConnectionManager,
        /// `--redis-timeout-ms`: the bound on each data operation, as on the fleet's.
        timeout: Duration,
    }

    /// Takes the symbol's next seq, stores the price as its latest and publishes it.
    /// `KEYS[1]`: the seq counter, `KEYS[2]`: the hash of latest prices. `ARGV[1]`: symbol,
    /// `ARGV[2]`: the price as JSON without `seq`, `ARGV[3]`: channel. Message: `<seq>|<json>`.
    static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            r#"
local seq = redis.call('INCR', KEYS[1])
local message = seq .. '|' .. ARGV[2]
redis.call('HSET', KEYS[2], ARGV[1], message)
redis.call('PUBLISH', ARGV[3], message)
return seq
"#,
        )
    });

    /// Raises a seq counter to at least `ARGV[1]` (an instance whose SQLite file is ahead).
    static RAISE_SEQ: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"#,
        )
    });

    #[derive(Deserialize)]
    struct Body {
        symbol: String,
        price: f64,
        ts: u64,
    }

    impl TickerFleet {
        /// Connects (Redis must answer at start-up; later outages follow `--redis-failure`).
        pub(crate) async fn connect(options: &Options) -> Result<Self, Box<dyn std::error::Error>> {
            let policy = match options.on_failure {
                OnFailure::Fallback => FailurePolicy::FallBackToLocal,
                OnFailure::Refuse => FailurePolicy::Refuse,
            };
            let fleet = Fleet::builder(options.url.as_str())
                .prefix(options.prefix.as_str())
                .timeout(options.timeout)
                .lease_ttl(options.lease_ttl)
                .on_failure(policy)
                .connect()
                .await?;
            // The ticker's data has its own connection, bounded by the same timeout and
            // remade after failures like the fleet's.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(200));
            let client = Client::open(options.url.as_str())?;
            let data = ConnectionManager::new_lazy_with_config(client, config)?;
            Ok(Self {
                fleet,
                data,
                timeout: options.timeout,
            })
        }

        /// Joins the fleet: seq counters at least this database's and the price listener
        /// running.
        pub(crate) async fn prepare(
            &self,
            db: &Db,
            hub: &Hub,
        ) -> Result<(), Box<dyn std::error::Error>> {
            self.raise_seqs(&hub.latest()).await?;
            self.spawn_listener(db.clone(), hub.clone());
            Ok(())
        }

        /// The fleet handle: the backend of the socket route's guard (rate limit, quota,
        /// revocation).
        pub(crate) fn handle(&self) -> &Fleet {
            &self.fleet
        }

        /// The fleet's revocation registry (shared through Redis), for `POST /revoke` and the
        /// revocation check of the HTTP routes.
        pub(crate) fn revocations(&self) -> wsguard::revoke::Revocations {
            self.fleet.revocations()
        }

        fn channel(&self) -> String {
            self.fleet.key("prices")
        }

        /// A key of the price data, `{<prefix>:prices}:<suffix>`: the seq counters and the
        /// latest prices share one hash tag, so that the publish script, which touches a
        /// counter and the hash together, runs on Redis Cluster too (one slot).
        fn data_key(&self, suffix: &str) -> String {
            format!("{{{}}}:{suffix}", self.fleet.key("prices"))
        }

        /// One data operation, within the timeout.
        async fn bounded<T>(
            &self,
            op: impl Future<Output = redis::RedisResult<T>>,
        ) -> Result<T, String> {
            match tokio::time::timeout(self.timeout, op).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        }

        async fn raise_seqs(&self, prices: &[Price]) -> Result<(), String> {
            for price in prices {
                let mut conn = self.data.clone();
                let key = self.data_key(&format!("seq:{}", price.symbol));
                self.bounded(
                    RAISE_SEQ
                        .key(key)
                        .arg(price.seq)
                        .invoke_async::<i64>(&mut conn),
                )
                .await?;
            }
            Ok(())
        }

        /// A price change from this instance (the `/prices` route or the simulator): published
        /// to every instance, this one included, which apply it when it comes back.
        pub(crate) async fn publish(&self, symbol: &str, price: f64) -> Result<Price, String> {
            let ts = crate::db::now_ms();
            let body =
                serde_json::json!({ "symbol": symbol, "price": price, "ts": ts }).to_string();
            let mut conn = self.data.clone();
            let mut script = PUBLISH.key(self.data_key(&format!("seq:{symbol}")));
            script
                .key(self.data_key("latest"))
                .arg(symbol)
                .arg(body)
                .arg(self.channel());
            let seq: u64 = self.bounded(script.invoke_async(&mut conn)).await?;
            Ok(Price {
                symbol: symbol.to_owned(),
                price,
                seq,
                ts,
            })
        }

        /// Applies the fleet's price changes to this instance, for ever: the channel's
        /// messages as they come, and on every (re)subscription the latest prices, which
        /// hold what this instance missed while it was not subscribed.
        fn spawn_listener(&self, db: Db, hub: Hub) {
            let mut prices = self.fleet.subscribe(self.channel());
            let this = self.clone();
            tokio::spawn(async move {
                // Logged once per outage, not once per retry.
                let mut failing = false;
                while let Some(event) = prices.recv().await {
                    match event {
                        SubscriptionEvent::Subscribed => match this.catch_up(&db, &hub).await {
                            Ok(()) => failing = false,
                            Err(e) => {
                                if !failing {
                                    tracing::warn!(
                                        "price listener cannot catch up ({e}); resubscribing"
                                    );
                                }
                                failing = true;
                                prices.resubscribe();
                            }
                        },
                        SubscriptionEvent::Message(message) => apply(&db, &hub, &message).await,
                        _ => {}
                    }
                }
            });
        }

        /// Applies the latest price of every symbol (older ones are ignored).
        async fn catch_up(&self, db: &Db, hub: &Hub) -> Result<(), String> {
            let mut conn = self.data.clone();
            let latest: Vec<String> = self
                .bounded(
                    redis::cmd("HVALS")
                        .arg(self.data_key("latest"))
                        .query_async(&mut conn),
                )
                .await?;
            for message in latest {
                apply(db, hub, &message).await;
            }
            Ok(())
        }
    }

    /// Applies one `<seq>|<json>` message: stored and fanned out if newer than what we have.
    async fn apply(db: &Db, hub: &Hub, message: &str) {
        let Some((seq, json)) = message.split_once('|') else {
            return;
        };
        let (Ok(seq), Ok(body)) = (seq.parse::<u64>(), serde_json::from_str::<Body>(json)) else {
            tracing::warn!("ignored a malformed fleet price message");
            return;
        };
        let price = Price {
            symbol: body.symbol,
            price: body.price,
            seq,
            ts: body.ts,
        };
        let (db, hub) = (db.clone(), hub.clone());
        let result =
            tokio::task::spawn_blocking(move || db.store_price(&price, |p| hub.publish(p))).await;
        if let Ok(Err(e)) = result {
            tracing::error!("database error applying a fleet price: {e}");
        }
    }
}
