//! The Cassandra writer of the Rust engine: prepared statements, unlogged batches per program,
//! a bounded number of requests in flight, retries for as long as a transient failure lasts,
//! and a split to single rows when Cassandra refuses a batch so that only the guilty row is
//! rejected.
//!
//! The caller (the Bytewax sink, through the binding) submits one consumed batch at a time and
//! gets a ticket back at once; it blocks only when the in-flight limit is reached
//! (back-pressure). A ticket is done when every row of its batch is acknowledged or rejected;
//! the caller collects done tickets in its own order and can wait for them (the recovery
//! snapshot does).

pub mod errors;
pub mod plan;
pub mod row;
pub mod stamp;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use errors::Class;
use row::RowWrite;

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct Config {
    pub hosts: Vec<String>,
    pub port: u16,
    pub keyspace: String,
    pub table: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub local_dc: Option<String>,
    pub consistency: Consistency,
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub threads: usize,
    /// Client TLS; None: clear text.
    pub tls: Option<tls::TlsFiles>,
}

pub fn consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

#[derive(Debug)]
pub enum ConnectError {
    /// Waiting does not fix a wrong password.
    Authentication(String),
    Unreachable(String),
    /// Reachable, but the table or the statements are wrong (a setup mistake).
    Setup(String),
    /// A TLS file that cannot be used (a settings mistake).
    TlsFile(tls::TlsFileError),
    /// The TLS handshake failed: a certificate that does not verify, a node that wants a
    /// client certificate, TLS against a clear-text port. Waiting does not fix it.
    TlsHandshake(String),
}

/// A finished ticket: when it was submitted and done (ms since the epoch) and the rows
/// Cassandra refused (message index in the batch, reason detail).
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub submitted_ms: f64,
    pub done_at_ms: f64,
    pub rejections: Vec<(u32, String)>,
}

/// Counters since the last [`Writer::take_stats`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub upserts: u64,
    pub deletes: u64,
    pub retries: u64,
    pub rejected: u64,
    pub errors: Vec<(&'static str, u64)>,
    pub last_error: String,
}

struct Pending {
    outstanding: usize,
    submitted_ms: f64,
    rejections: Vec<(u32, String)>,
}

#[derive(Default)]
struct Tickets {
    pending: HashMap<u64, Pending>,
    done: HashMap<u64, Done>,
}

#[derive(Default)]
struct Counters {
    upserts: AtomicU64,
    deletes: AtomicU64,
    retries: AtomicU64,
    rejected: AtomicU64,
    errors: Mutex<(HashMap<&'static str, u64>, String)>,
}

struct Shared {
    session: Session,
    insert: PreparedStatement,
    delete: PreparedStatement,
    consistency: Consistency,
    tickets: Mutex<Tickets>,
    changed: Condvar,
    counters: Counters,
}

pub struct Writer {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    next_ticket: AtomicU64,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Backoff before the `attempt`-th resend: 0.2 s doubling to 10 s, as the Python engine.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs_f64((0.1 * 2f64.powi(attempt.min(16) as i32)).min(10.0))
}

/// A contact point as the driver parses it: an IPv6 address needs brackets before its port
/// (settings keep hosts without them, which is what cassandra-driver takes).
pub fn node_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub fn insert_cql(keyspace: &str, table: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.{table} ({}) VALUES ({}) USING TIMESTAMP ?",
        row::COLUMNS.join(", "),
        vec!["?"; row::COLUMNS.len()].join(", ")
    )
}

pub fn delete_cql(keyspace: &str, table: &str) -> String {
    format!("DELETE FROM {keyspace}.{table} USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?")
}

impl Writer {
    /// Start a runtime in this process and connect once (the caller decides whether and how
    /// long to retry an unreachable cluster).
    pub fn connect(config: &Config) -> Result<Writer, ConnectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("pui-cassandra")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Setup(format!("cannot start the I/O runtime: {e}")))?;
        let shared = runtime.block_on(Self::open(config))?;
        Ok(Writer {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            shared: Arc::new(shared),
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            next_ticket: AtomicU64::new(1),
        })
    }

    async fn open(config: &Config) -> Result<Shared, ConnectError> {
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &config.local_dc {
            policy = policy
                .prefer_datacenter(dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(config.hosts.iter().map(|h| node_address(h, config.port)))
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.into_handle())
            // The job only writes one table: the rest of the schema is not ours to track.
            .keyspaces_to_fetch([config.keyspace.clone()]);
        if let Some(user) = &config.username {
            builder = builder.user(user.clone(), config.password.clone().unwrap_or_default());
        }
        if let Some(files) = &config.tls {
            let context = tls::client_config(files).map_err(ConnectError::TlsFile)?;
            builder = builder.tls_context(Some(context));
        }
        let session = tokio::time::timeout(config.connect_timeout * 3, builder.build())
            .await
            .map_err(|_| ConnectError::Unreachable("timed out".into()))?
            .map_err(|e| {
                let text = e.to_string();
                if text.to_ascii_lowercase().contains("authenticat") {
                    ConnectError::Authentication(text)
                } else if config.tls.is_some() && tls::is_tls_failure(&text) {
                    ConnectError::TlsHandshake(tls::last_cause(&text).to_owned())
                } else {
                    ConnectError::Unreachable(text)
                }
            })?;
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut stmt = session
                    .prepare(cql)
                    .await
                    .map_err(|e| ConnectError::Setup(e.to_string()))?;
                stmt.set_consistency(config.consistency);
                stmt.set_is_idempotent(true);
                Ok::<_, ConnectError>(stmt)
            }
        };
        let insert = prepare(insert_cql(&config.keyspace, &config.table)).await?;
        let delete = prepare(delete_cql(&config.keyspace, &config.table)).await?;
        Ok(Shared {
            session,
            insert,
            delete,
            consistency: config.consistency,
            tickets: Mutex::new(Tickets::default()),
            changed: Condvar::new(),
            counters: Counters::default(),
        })
    }

    /// Send `writes` (one consumed batch) and return its ticket. Blocks only while the
    /// in-flight limit is reached.
    pub fn submit(&self, writes: Vec<RowWrite>) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let submitted_ms = now_ms();
        {
            let mut t = self.shared.tickets.lock().unwrap();
            if writes.is_empty() {
                t.done.insert(
                    ticket,
                    Done {
                        submitted_ms,
                        done_at_ms: submitted_ms,
                        rejections: Vec::new(),
                    },
                );
                return ticket;
            }
            t.pending.insert(
                ticket,
                Pending {
                    outstanding: writes.len(),
                    submitted_ms,
                    rejections: Vec::new(),
                },
            );
        }
        for request in plan::requests(writes) {
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => self
                    .handle
                    .block_on(self.permits.clone().acquire_owned())
                    .expect("the semaphore is never closed"),
            };
            self.handle
                .spawn(run(self.shared.clone(), ticket, request, permit));
        }
        ticket
    }

    /// The ticket's result if it is done (and forget it).
    pub fn take(&self, ticket: u64) -> Option<Done> {
        self.shared.tickets.lock().unwrap().done.remove(&ticket)
    }

    /// Wait until every ticket in `tickets` is done, at most `timeout`; true when they are.
    pub fn wait(&self, tickets: &[u64], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut t = self.shared.tickets.lock().unwrap();
        loop {
            if tickets.iter().all(|id| !t.pending.contains_key(id)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self.shared.changed.wait_timeout(t, left).unwrap().0;
        }
    }

    pub fn take_stats(&self) -> Stats {
        let c = &self.shared.counters;
        let (errors, last_error) = {
            let mut e = c.errors.lock().unwrap();
            let errors: Vec<(&'static str, u64)> = e.0.drain().collect();
            (errors, std::mem::take(&mut e.1))
        };
        Stats {
            upserts: c.upserts.swap(0, Ordering::Relaxed),
            deletes: c.deletes.swap(0, Ordering::Relaxed),
            retries: c.retries.swap(0, Ordering::Relaxed),
            rejected: c.rejected.swap(0, Ordering::Relaxed),
            errors,
            last_error,
        }
    }

    /// Requests in flight or waiting for a retry.
    pub fn in_flight(&self) -> usize {
        self.shared.tickets.lock().unwrap().pending.len()
    }

    /// Stop the runtime: unfinished requests are abandoned (the caller waits first when it
    /// wants them finished).
    pub fn close(&self) {
        if let Some(rt) = self.runtime.lock().unwrap().take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    async fn execute(&self, rows: &[RowWrite]) -> Result<(), ExecutionError> {
        let stmt = |w: &RowWrite| {
            if w.op.is_upsert() {
                &self.insert
            } else {
                &self.delete
            }
        };
        if let [only] = rows {
            self.session.execute_unpaged(stmt(only), &only.op).await?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_consistency(self.consistency);
        batch.set_is_idempotent(true);
        for w in rows {
            batch.append_statement(stmt(w).clone());
        }
        let values: Vec<&row::Op> = rows.iter().map(|w| &w.op).collect();
        self.session.batch(&batch, values).await?;
        Ok(())
    }

    /// Send until it succeeds or Cassandra refuses it for good (the reason is returned).
    async fn execute_retrying(&self, rows: &[RowWrite]) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            let err = match self.execute(rows).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            match errors::classify(&err) {
                Class::Permanent => return Err(errors::describe(&err)),
                Class::Transient(kind) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut e = self.counters.errors.lock().unwrap();
                        *e.0.entry(kind).or_default() += 1;
                        e.1 = kind.to_owned();
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    fn settle(&self, ticket: u64, rows: &[RowWrite], refused: Option<String>) {
        match &refused {
            None => {
                let upserts = rows.iter().filter(|w| w.op.is_upsert()).count() as u64;
                self.counters.upserts.fetch_add(upserts, Ordering::Relaxed);
                self.counters
                    .deletes
                    .fetch_add(rows.len() as u64 - upserts, Ordering::Relaxed);
            }
            Some(_) => {
                self.counters
                    .rejected
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
        }
        let mut t = self.tickets.lock().unwrap();
        let finished = match t.pending.get_mut(&ticket) {
            Some(p) => {
                if let Some(reason) = &refused {
                    p.rejections
                        .extend(rows.iter().map(|w| (w.index, reason.clone())));
                }
                p.outstanding -= rows.len();
                p.outstanding == 0
            }
            None => false,
        };
        if finished {
            let mut p = t.pending.remove(&ticket).expect("present above");
            p.rejections.sort_by_key(|r| r.0);
            t.done.insert(
                ticket,
                Done {
                    submitted_ms: p.submitted_ms,
                    done_at_ms: now_ms(),
                    rejections: p.rejections,
                },
            );
            self.changed.notify_all();
        }
    }
}

async fn run(shared: Arc<Shared>, ticket: u64, rows: Vec<RowWrite>, _permit: OwnedSemaphorePermit) {
    match shared.execute_retrying(&rows).await {
        Ok(()) => shared.settle(ticket, &rows, None),
        Err(reason) if rows.len() == 1 => shared.settle(ticket, &rows, Some(reason)),
        Err(_) => {
            // One bad row (or a batch over the size limit) fails the whole batch: send the rows
            // alone so that only the guilty ones are rejected.
            for row in rows.chunks(1) {
                let outcome = shared.execute_retrying(row).await.err();
                shared.settle(ticket, row, outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_bind_every_column_then_the_timestamp() {
        let cql = insert_cql("ks", "t");
        assert!(cql.starts_with("INSERT INTO ks.t (program_id, user_id, program_externalid"));
        assert_eq!(cql.matches('?').count(), row::COLUMNS.len() + 1);
        assert!(cql.ends_with("USING TIMESTAMP ?"));
        assert_eq!(
            delete_cql("ks", "t"),
            "DELETE FROM ks.t USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?"
        );
    }

    #[test]
    fn ipv6_contact_points_get_brackets() {
        assert_eq!(node_address("cassandra-0", 9042), "cassandra-0:9042");
        assert_eq!(node_address("10.0.0.5", 9042), "10.0.0.5:9042");
        assert_eq!(node_address("::1", 9042), "[::1]:9042");
        assert!(node_address("fd00::5", 19042)
            .parse::<std::net::SocketAddr>()
            .is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(10), Duration::from_secs(10));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn consistency_names_are_cassandras() {
        assert_eq!(consistency("local_quorum"), Some(Consistency::LocalQuorum));
        assert_eq!(consistency("ONE"), Some(Consistency::One));
        assert_eq!(consistency("MOST"), None);
    }
}
