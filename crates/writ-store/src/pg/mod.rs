//! The PostgreSQL implementation of [`Store`](crate::Store), for several servers sharing one
//! trust domain (issue 15).
//!
//! Shape: a small pool of `tokio-postgres` connections whose connection tasks run on the store's
//! own two-thread runtime; the [`Store`](crate::Store) methods are synchronous (as sled's are),
//! so a call hands its query to a pooled client and waits for the answer on the calling thread
//! ([`block_on`]): the client half of `tokio-postgres` only talks to its connection task through
//! channels, so it needs no reactor of its own, and a server worker that waits for PostgreSQL is
//! a worker that waits for the disk with sled.
//!
//! Invariants:
//! - Every write is one transaction, committed (WAL flushed, `synchronous_commit` as the
//!   cluster has it; on by default) before the method returns.
//! - Entry writes and audit appends are serialised **by the database** (a row lock on the
//!   revision counter / the audit head, held to commit), not by one process: revisions are
//!   committed in the order they are numbered, so a reader that saw revision N has seen every
//!   revision below it, and the audit chain stays linear across servers.
//! - Every committed change also sends `NOTIFY writ` in its transaction (delivered on commit
//!   only); the listener ([`listen`]) turns those into [`Notice`](crate::Notice)s. The revision
//!   log stays the source of truth: a lost notification or a reconnect sends
//!   [`Notice::Resync`](crate::Notice::Resync) and readers catch up from their revision.
//! - The CA journal is kept per server (`ca/<instance>`): each server has its own CA key.

/// Runs `$body` (an async block body using the pooled connection `$c`, returning
/// `Result<_, StoreError>`) and waits for it. A pooled connection can turn out dead when used
/// (the database restarted, or cut it, since it was last used): if the call failed as
/// [`StoreError::Unavailable`] before `$sent` was set (writes set it just before `COMMIT`, after
/// which the outcome is unknown), it runs once more on a fresh connection.
macro_rules! with_conn {
    ($store:expr, |$c:ident, $sent:ident| $body:block) => {{
        let mut attempt = 0u8;
        loop {
            #[allow(unused_mut)]
            let mut $c = $store.conn()?;
            let $sent = std::cell::Cell::new(false);
            let r: Result<_, $crate::StoreError> = $crate::pg::block_on(async { $body });
            match r {
                Err($crate::StoreError::Unavailable(_)) if !$sent.get() && attempt == 0 => {
                    attempt += 1;
                }
                r => break r,
            }
        }
    }};
}

mod audit;
mod entries;
mod listen;
mod records;
mod schema;
mod tls;

use std::future::Future;
use std::pin::pin;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config};

use crate::{Notice, StoreError};

/// Connections kept per server (entry writes serialise in the database; reads and node
/// renewals run side by side on the others).
const POOL_SIZE: usize = 4;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection when all are busy.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side limits set on every connection (unless the URL sets `options`): a statement or
/// a lock wait that takes longer fails instead of holding a connection (and its caller).
const SESSION_OPTIONS: &str = "-c statement_timeout=15000 -c lock_timeout=10000";

/// `[store.postgres]` settings.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/db?...` or the key=value form libpq accepts.
    pub url: String,
    /// The password, read from `password_file` by the caller (trailing newline removed).
    pub password: Option<String>,
    /// This server's name among the servers sharing the database (keys its CA journal).
    pub instance: String,
    /// PEM roots the database's TLS certificate must chain to (`ca_file`); None: no TLS.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password too: only where it points is shown.
        let url = Config::from_str(&self.url)
            .map(|c| describe(&c))
            .unwrap_or_else(|_| "(unparsable)".into());
        f.debug_struct("PgSettings")
            .field("url", &url)
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .field("instance", &self.instance)
            .field("tls", &self.ca_pem.is_some())
            .finish()
    }
}

/// The PostgreSQL datastore.
pub struct PgStore {
    pool: Pool,
    instance: String,
    notices: broadcast::Sender<Notice>,
    /// Runs the connection tasks and the listener; shut down with the store.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The store is usually dropped inside the server's runtime, where a blocking shutdown
        // is not allowed; the connection tasks need no draining (nothing is in flight once
        // the last caller returned).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Where a config points, without its password: for error messages and logs.
pub(crate) fn describe(cfg: &Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or("?"),
        cfg.get_dbname().unwrap_or("?")
    )
}

impl PgStore {
    /// Connects, applies the schema migrations, and starts listening for other servers' changes.
    pub fn open(settings: PgSettings) -> Result<Self, StoreError> {
        let mut cfg = Config::from_str(&settings.url).map_err(|e| StoreError::Open {
            path: "[store.postgres] url".into(),
            source: format!("not a PostgreSQL connection string: {e}").into(),
        })?;
        if let Some(p) = &settings.password {
            cfg.password(p.as_bytes());
        }
        let tls = tls::Tls::from_pem(settings.ca_pem.as_deref())?;
        match (&tls, cfg.get_ssl_mode()) {
            (tls::Tls::Off, tokio_postgres::config::SslMode::Require) => {
                return Err(StoreError::Open {
                    path: "[store.postgres] url".into(),
                    source: "sslmode=require needs [store.postgres] ca_file (the CA that \
                             signed the database's certificate) to verify the server"
                        .into(),
                })
            }
            // With ca_file, TLS is required: never fall back to plain text.
            (tls::Tls::On(_), _) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            }
            _ => {}
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        cfg.application_name("writ-server");
        // A database that vanishes without closing connections (a network partition) is
        // noticed by TCP keepalives and the user timeout instead of hanging callers.
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(20));
        if cfg.get_options().is_none() {
            cfg.options(SESSION_OPTIONS);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("writ-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(e.into()))?;
        let pool = Pool {
            cfg: cfg.clone(),
            tls: tls.clone(),
            handle: rt.handle().clone(),
            idle: Mutex::new(Vec::new()),
            free: Condvar::new(),
            open: Mutex::new(0),
        };
        // The first connection says whether the URL, the password and the server are right.
        let (notices, _) = broadcast::channel(1024);
        let handle = rt.handle().clone();
        // From here on a failure drops the store, which shuts the runtime down safely.
        let store = PgStore {
            pool,
            instance: settings.instance,
            notices,
            rt: Some(rt),
        };
        {
            let mut c = store.conn()?;
            block_on(schema::migrate(&mut c))?;
        }
        listen::spawn(&handle, cfg, tls, store.notices.clone());
        Ok(store)
    }

    /// A pooled connection (back to the pool when dropped; a broken one is closed instead, and
    /// the next call opens a new one). Callers drive their queries with [`block_on`].
    pub(crate) fn conn(&self) -> Result<Conn<'_>, StoreError> {
        Ok(Conn {
            pool: &self.pool,
            client: Some(self.pool.get()?),
        })
    }

    /// The JSON `body` column (first column) of every row `sql` returns, decoded.
    pub(crate) fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[P<'_>],
    ) -> Result<Vec<T>, StoreError> {
        with_conn!(self, |c, _sent| { Ok(c.query(sql, params).await?) })?
            .iter()
            .map(|r| entries::dec_s(r.get(0)))
            .collect()
    }

    /// [`PgStore::read_all`] for a query of at most one row.
    pub(crate) fn read_one<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[P<'_>],
    ) -> Result<Option<T>, StoreError> {
        with_conn!(self, |c, _sent| { Ok(c.query_opt(sql, params).await?) })?
            .map(|r| entries::dec_s(r.get(0)))
            .transpose()
    }

    /// This server's name among those sharing the database.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The sender of change notices (the listener feeds it).
    pub(crate) fn notices(&self) -> &broadcast::Sender<Notice> {
        &self.notices
    }
}

/// A connection out of the pool.
pub(crate) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Always Some until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.pool.put_back(c);
        }
    }
}

/// A blocking pool of connections.
struct Pool {
    cfg: Config,
    tls: tls::Tls,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<Client>>,
    free: Condvar,
    /// Connections open (idle or in use).
    open: Mutex<usize>,
}

impl Pool {
    fn connect_raw(&self) -> Result<Client, StoreError> {
        let (cfg, tls) = (self.cfg.clone(), self.tls.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            match tls.connect(&cfg).await {
                Ok((client, conn)) => {
                    let _ = tx.send(Ok(client));
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "PostgreSQL connection closed");
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let client = rx
            .recv()
            .map_err(|_| StoreError::Db("the PostgreSQL runtime stopped".into()))?
            .map_err(|e| StoreError::Open {
                path: describe(&self.cfg),
                source: pg_reason(&e).into(),
            })?;
        Ok(client)
    }

    fn get(&self) -> Result<Client, StoreError> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    return Ok(c);
                }
                *self.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            }
            let reserved = {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                // The slot is taken before connecting, so callers racing here cannot open
                // more than the pool's size between them.
                (*open < POOL_SIZE).then(|| *open += 1).is_some()
            };
            if reserved {
                drop(idle);
                return self.connect_reserved().map_err(|e| match e {
                    // Once open, a failed reconnect is the database being away.
                    StoreError::Open { path, source } => StoreError::Db(
                        format!("cannot reach PostgreSQL at {path}: {source}").into(),
                    ),
                    e => e,
                });
            }
            // Every connection busy: wait, but not forever (a database that stopped answering
            // holds them until their timeouts; callers get an error, not a hang).
            let (g, timeout) = self
                .free
                .wait_timeout(idle, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|p| p.into_inner());
            idle = g;
            if timeout.timed_out() && idle.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "all {POOL_SIZE} PostgreSQL connections stayed busy for {} s",
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// [`Pool::connect`] for a slot already counted in `open` (given back on failure).
    fn connect_reserved(&self) -> Result<Client, StoreError> {
        self.connect_raw().inspect_err(|_| {
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            self.free.notify_one();
        })
    }

    fn put_back(&self, c: Client) {
        if c.is_closed() {
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        } else {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        self.free.notify_one();
    }
}

/// The useful part of a PostgreSQL error: the server's message when there is one.
pub(crate) fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // No answer from the server (connection closed or broken) is the database being away;
        // an error the server sent is about the query.
        if e.as_db_error().is_none() {
            return StoreError::Unavailable(format!("PostgreSQL: {}", pg_reason(&e)));
        }
        StoreError::Db(format!("PostgreSQL: {}", pg_reason(&e)).into())
    }
}

/// A query parameter.
pub(crate) type P<'a> = &'a (dyn ToSql + Sync);

/// Wakes the thread waiting in [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives `fut` to completion on this thread (parking between wake-ups). Used only for client
/// futures whose I/O runs on the store's runtime.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    // On a worker of a multi-thread runtime (the server's), tell tokio this thread blocks so
    // it moves the worker's other tasks elsewhere meanwhile: a slow database then slows the
    // calls that need it, not everything queued behind them on the same worker.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| park_on(fut))
        }
        _ => park_on(fut),
    }
}

fn park_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
