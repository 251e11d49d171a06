//! The embedded database: prices and users in one SQLite file.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// The symbols a new database starts with, and their opening prices.
const SEED: &[(&str, f64)] = &[
    ("AAPL", 231.40),
    ("MSFT", 428.15),
    ("GOOG", 167.90),
    ("AMZN", 186.30),
    ("NVDA", 121.75),
    ("TSLA", 248.50),
    ("SAP", 212.60),
    ("ASML", 702.10),
];

/// One price as stored and as sent to clients.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Price {
    pub(crate) symbol: String,
    pub(crate) price: f64,
    /// Rises by exactly one per change of this symbol.
    pub(crate) seq: u64,
    /// Time of the change, milliseconds since the Unix epoch.
    pub(crate) ts: u64,
}

#[derive(Debug)]
pub(crate) enum PriceError {
    UnknownSymbol,
    InvalidPrice,
    Database(rusqlite::Error),
}

impl std::fmt::Display for PriceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownSymbol => f.write_str("unknown symbol"),
            Self::InvalidPrice => f.write_str("price must be a positive, finite number"),
            Self::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl From<rusqlite::Error> for PriceError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e)
    }
}

/// Shared handle; every method blocks briefly on SQLite, so async callers use
/// `spawn_blocking` for anything but the tiniest reads.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    /// A hash to verify against when the user does not exist, so that an unknown user costs
    /// the same time as a wrong password.
    dummy_hash: Arc<str>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

impl Db {
    /// Opens (creating and seeding if new) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS prices (
                 symbol TEXT PRIMARY KEY,
                 price  REAL NOT NULL CHECK (price > 0),
                 seq    INTEGER NOT NULL,
                 ts     INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS users (
                 name      TEXT PRIMARY KEY,
                 hash      TEXT NOT NULL,
                 publisher INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        // Migration: databases made before the publisher role have no such column; their
        // users are not publishers until `--publisher` names them.
        let has_role: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('users') WHERE name = 'publisher'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_role {
            conn.execute_batch(
                "ALTER TABLE users ADD COLUMN publisher INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM prices", [], |r| r.get(0))?;
        if count == 0 {
            let ts = now_ms();
            for (symbol, price) in SEED {
                conn.execute(
                    "INSERT INTO prices (symbol, price, seq, ts) VALUES (?1, ?2, 0, ?3)",
                    params![symbol, price, ts as i64],
                )?;
            }
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            dummy_hash: hash("not a real password")?.into(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn user_count(&self) -> rusqlite::Result<i64> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
    }

    /// Adds or updates a user, with the publisher role or without it.
    pub(crate) fn upsert_user(
        &self,
        name: &str,
        password: &str,
        publisher: bool,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let hash = hash(password)?;
        self.lock().execute(
            "INSERT INTO users (name, hash, publisher) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, publisher = excluded.publisher",
            params![name, hash, publisher],
        )?;
        Ok(())
    }

    /// Gives an existing user the publisher role; false if there is no such user.
    pub(crate) fn make_publisher(&self, name: &str) -> rusqlite::Result<bool> {
        self.lock()
            .execute(
                "UPDATE users SET publisher = 1 WHERE name = ?1",
                params![name],
            )
            .map(|n| n == 1)
    }

    /// Whether `name` may publish prices (one indexed read).
    pub(crate) fn is_publisher(&self, name: &str) -> rusqlite::Result<bool> {
        self.lock()
            .query_row(
                "SELECT publisher FROM users WHERE name = ?1",
                params![name],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|p| p.unwrap_or(false))
    }

    /// Checks a password. Slow on purpose (argon2): call from `spawn_blocking`. Takes the same
    /// time whether or not the user exists.
    pub(crate) fn verify_user(&self, name: &str, password: &str) -> bool {
        let stored: Option<String> = self
            .lock()
            .query_row(
                "SELECT hash FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = PasswordHash::new(&stored)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && exists
    }

    pub(crate) fn snapshot(&self) -> rusqlite::Result<Vec<Price>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT symbol, price, seq, ts FROM prices ORDER BY symbol")?;
        let rows = stmt.query_map([], |r| {
            Ok(Price {
                symbol: r.get(0)?,
                price: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                ts: r.get::<_, i64>(3)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Fleet mode: stores a price decided through Redis if it is newer (by `seq`) than the
    /// stored one and, with the lock held, hands it to `publish`. Returns whether it was.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn store_price(
        &self,
        price: &Price,
        publish: impl FnOnce(&Price),
    ) -> rusqlite::Result<bool> {
        let conn = self.lock();
        let changed = conn.execute(
            "UPDATE prices SET price = ?2, seq = ?3, ts = ?4 WHERE symbol = ?1 AND seq < ?3",
            params![price.symbol, price.price, price.seq as i64, price.ts as i64],
        )?;
        if changed == 1 {
            publish(price);
        }
        Ok(changed == 1)
    }

    /// Writes a new price and, once the change is committed and while the lock is still held
    /// (so `seq` order is publication order), hands it to `publish`.
    pub(crate) fn set_price(
        &self,
        symbol: &str,
        price: f64,
        publish: impl FnOnce(&Price),
    ) -> Result<Price, PriceError> {
        if !price.is_finite() || price <= 0.0 {
            return Err(PriceError::InvalidPrice);
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let ts = now_ms();
        let updated = tx
            .query_row(
                "UPDATE prices SET price = ?2, seq = seq + 1, ts = ?3 WHERE symbol = ?1
                 RETURNING symbol, price, seq, ts",
                params![symbol, price, ts as i64],
                |r| {
                    Ok(Price {
                        symbol: r.get(0)?,
                        price: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                        ts: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()?;
        let Some(updated) = updated else {
            return Err(PriceError::UnknownSymbol);
        };
        tx.commit()?;
        publish(&updated);
        Ok(updated)
    }
}
