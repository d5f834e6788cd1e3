//! The binding of [`crate::writer`]: `Writer(...)`, `submit`, `take`, `wait`, `take_stats`,
//! `close`. The GIL is held only to copy the batch in and the results out; parsing, the rules,
//! serialising and every wait run without it.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyPermissionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::rules::{self, CaseMap, Outcome};
use crate::writer::row::{self, Planned, RowWrite};
use crate::writer::tls::TlsFiles;
use crate::writer::{self, ConnectError, Writer};

// A ConnectionError that waiting does not fix: the caller stops instead of retrying.
create_exception!(_native, TlsHandshakeError, PyConnectionError);

/// Case mapping off the GIL: ASCII in Rust, anything else with Python's own tables (taking the
/// GIL for that call only), so that both engines agree exactly.
struct DetachedCase;

impl DetachedCase {
    fn python(s: &str, method: &str) -> String {
        Python::attach(|py| {
            PyString::new(py, s)
                .call_method0(method)
                .and_then(|r| r.extract::<String>())
                .unwrap_or_else(|_| s.to_owned())
        })
    }
}

impl CaseMap for DetachedCase {
    fn upper(&self, s: &str) -> String {
        if s.is_ascii() {
            s.to_ascii_uppercase()
        } else {
            Self::python(s, "upper")
        }
    }
    fn lower(&self, s: &str) -> String {
        if s.is_ascii() {
            s.to_ascii_lowercase()
        } else {
            Self::python(s, "lower")
        }
    }
}

/// A consumed batch copied out of Python objects, so that the GIL can be released.
struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
    timestamps: Vec<Option<i64>>,
}

/// Bytes of all values, so that the copy is one allocation and no reallocation.
fn total_len(values: &Bound<'_, PyList>) -> usize {
    values
        .iter()
        .filter_map(|v| v.cast::<PyBytes>().ok().map(|b| b.as_bytes().len()))
        .sum()
}

impl Batch {
    fn copy(values: &Bound<'_, PyList>, timestamps: Vec<i64>) -> PyResult<Batch> {
        if timestamps.len() != values.len() {
            return Err(PyValueError::new_err("one timestamp per value"));
        }
        let mut batch = Batch {
            data: Vec::with_capacity(total_len(values)),
            ends: Vec::with_capacity(values.len()),
            timestamps: timestamps
                .into_iter()
                .map(|t| (t >= 0).then_some(t))
                .collect(),
        };
        for item in values.iter() {
            if !item.is_none() {
                let bytes = item
                    .cast::<PyBytes>()
                    .map_err(|_| PyValueError::new_err("values must be bytes or None"))?;
                batch.data.extend_from_slice(bytes.as_bytes());
            }
            batch.ends.push(batch.data.len());
        }
        Ok(batch)
    }

    fn message(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

#[pyclass(name = "Writer", module = "dataflow.flatten_rs", frozen)]
pub struct PyWriter {
    inner: Writer,
    max_bytes: usize,
    offset_us: i64,
}

type Rejections = Vec<(u32, String, String)>;
/// `(submitted_ms, done_at_ms, [(index, detail), ...])`.
type DoneTuple = (f64, f64, Vec<(u32, String)>);

#[pymethods]
impl PyWriter {
    /// Connect once (raises `ConnectionError` when unreachable, `PermissionError` when the
    /// credentials are refused, `RuntimeError` when the table or statements are wrong).
    #[new]
    #[pyo3(signature = (*, hosts, port, keyspace, table, username=None, password=None,
        local_dc=None, consistency="LOCAL_QUORUM", max_in_flight=64, max_bytes=1048576,
        offset_us=0, connect_timeout_s=10.0, threads=2, tls=false, tls_ca_file=None,
        tls_cert_file=None, tls_key_file=None, tls_check_hostname=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        hosts: Vec<String>,
        port: u16,
        keyspace: String,
        table: String,
        username: Option<String>,
        password: Option<String>,
        local_dc: Option<String>,
        consistency: &str,
        max_in_flight: usize,
        max_bytes: usize,
        offset_us: i64,
        connect_timeout_s: f64,
        threads: usize,
        tls: bool,
        tls_ca_file: Option<PathBuf>,
        tls_cert_file: Option<PathBuf>,
        tls_key_file: Option<PathBuf>,
        tls_check_hostname: bool,
    ) -> PyResult<Self> {
        let consistency = writer::consistency(consistency)
            .ok_or_else(|| PyValueError::new_err(format!("unknown consistency {consistency}")))?;
        let config = writer::Config {
            hosts,
            port,
            keyspace,
            table,
            username,
            password,
            local_dc,
            consistency,
            max_in_flight,
            connect_timeout: Duration::from_secs_f64(connect_timeout_s.max(0.1)),
            threads,
            tls: tls.then_some(TlsFiles {
                ca_file: tls_ca_file,
                cert_file: tls_cert_file,
                key_file: tls_key_file,
                check_hostname: tls_check_hostname,
            }),
        };
        let inner = py
            .detach(|| Writer::connect(&config))
            .map_err(|e| match e {
                ConnectError::Authentication(m) => PyPermissionError::new_err(m),
                ConnectError::Unreachable(m) => PyConnectionError::new_err(m),
                ConnectError::Setup(m) => PyRuntimeError::new_err(m),
                // (which file, why): the caller names the setting.
                ConnectError::TlsFile(e) => PyValueError::new_err((e.which, e.detail)),
                ConnectError::TlsHandshake(m) => TlsHandshakeError::new_err(m),
            })?;
        Ok(PyWriter {
            inner,
            max_bytes,
            offset_us,
        })
    }

    /// Flatten and send one consumed batch. `values` are the message values (None for a
    /// tombstone), `timestamps` their Kafka timestamps in ms (negative: none), `clock_us` the
    /// wall clock that stamps are clamped to. Returns `(ticket, rejections, invalid_dates)`
    /// where `rejections` lists `(index, reason, detail)` of messages the rules refused.
    fn submit(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyList>,
        timestamps: Vec<i64>,
        clock_us: i64,
    ) -> PyResult<(u64, Rejections, u64)> {
        let batch = Batch::copy(values, timestamps)?;
        Ok(py.detach(|| {
            let (writes, rejections, invalid_dates) = self.plan(&batch, clock_us);
            (self.inner.submit(writes), rejections, invalid_dates)
        }))
    }

    /// Benchmark only: flatten `values` first, then time writing all their rows as fast as
    /// Cassandra takes them (tickets of 1,000 rows). Returns `(seconds, rows)`.
    fn load_preflattened(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyList>,
        clock_us: i64,
    ) -> PyResult<(f64, usize)> {
        let timestamps = vec![-1; values.len()];
        let batch = Batch::copy(values, timestamps)?;
        Ok(py.detach(|| {
            let (writes, _, _) = self.plan(&batch, clock_us);
            let rows = writes.len();
            let start = std::time::Instant::now();
            let mut tickets = Vec::new();
            let mut chunk = Vec::with_capacity(1000);
            for w in writes {
                chunk.push(w);
                if chunk.len() == 1000 {
                    tickets.push(self.inner.submit(std::mem::take(&mut chunk)));
                }
            }
            tickets.push(self.inner.submit(chunk));
            while !self.inner.wait(&tickets, Duration::from_secs(3600)) {}
            for t in tickets {
                self.inner.take(t);
            }
            (start.elapsed().as_secs_f64(), rows)
        }))
    }

    /// `(submitted_ms, done_at_ms, [(index, detail), ...])` of a done ticket (once), else None.
    fn take(&self, ticket: u64) -> Option<DoneTuple> {
        self.inner
            .take(ticket)
            .map(|d| (d.submitted_ms, d.done_at_ms, d.rejections))
    }

    /// Wait until every ticket is done; returns False after `timeout_s`. Signals (Ctrl-C) are
    /// checked every 100 ms.
    fn wait(&self, py: Python<'_>, tickets: Vec<u64>, timeout_s: f64) -> PyResult<bool> {
        let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout_s.max(0.0));
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let slice = left.min(Duration::from_millis(100));
            if py.detach(|| self.inner.wait(&tickets, slice)) {
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    /// Counters since the last call: upserts, deletes, retries, rejected, errors (kind -> n)
    /// and the last transient error's kind.
    fn take_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.take_stats();
        let d = PyDict::new(py);
        d.set_item("upserts", s.upserts)?;
        d.set_item("deletes", s.deletes)?;
        d.set_item("retries", s.retries)?;
        d.set_item("rejected", s.rejected)?;
        d.set_item("errors", s.errors.into_iter().collect::<Vec<_>>())?;
        d.set_item("last_error", s.last_error)?;
        Ok(d)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// Stop the runtime (after the caller waited for what it wants finished).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }
}

impl PyWriter {
    /// The rows to write, the rejections and the count of invalid dates of one batch.
    fn plan(&self, batch: &Batch, clock_us: i64) -> (Vec<RowWrite>, Rejections, u64) {
        let mut writes = Vec::with_capacity(batch.ends.len());
        let mut rejections = Vec::new();
        let mut invalid_dates = 0;
        for i in 0..batch.ends.len() {
            let raw = batch.message(i);
            // A bug in one message must not take the batch down: it becomes a rejection.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                row::plan(
                    rules::flatten_message(raw, self.max_bytes, &DetachedCase),
                    batch.timestamps[i],
                    clock_us,
                    self.offset_us,
                )
            }))
            .unwrap_or_else(|_| {
                row::plan(
                    Outcome::Reject {
                        reason: "internal_error".into(),
                        detail: "the Rust flattener failed on this message".into(),
                    },
                    None,
                    clock_us,
                    0,
                )
            });
            match outcome {
                Planned::Write { op, invalid_date } => {
                    invalid_dates += u64::from(invalid_date);
                    writes.push(RowWrite {
                        index: i as u32,
                        op,
                    });
                }
                Planned::Reject { reason, detail } => rejections.push((i as u32, reason, detail)),
            }
        }
        (writes, rejections, invalid_dates)
    }
}

/// The insert's column order, for the Python side to check its own list against.
#[pyfunction]
pub fn writer_columns() -> Vec<&'static str> {
    row::COLUMNS.to_vec()
}
