//! `dataflow.flatten_rs`: the hot path of the streaming job, one call per Kafka batch.
//!
//! The rules live in pure Rust ([`rules`], [`json`], [`dates`]); this module only turns a batch
//! of `bytes` into outcomes and the outcomes into the tuples of the Python contract
//! (`dataflow/flatten/__init__.py`).

pub mod dates;
pub mod json;
mod py_writer;
pub mod rules;
pub mod writer;

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDate, PyDict, PyList, PyString, PyTuple};
use rustc_hash::FxHashMap;

use dates::Date;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rules::{CaseMap, Outcome, Written};

/// Version of the compiled flattener, so Python can check it loaded the build it expects.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Case mapping with Python's own tables for non-ASCII text, so both engines agree exactly.
struct PyCase<'py>(Python<'py>);

impl PyCase<'_> {
    fn call(&self, s: &str, method: &Bound<'_, PyString>) -> String {
        PyString::new(self.0, s)
            .call_method0(method)
            .and_then(|r| r.extract::<String>())
            .unwrap_or_else(|_| s.to_owned())
    }
}

impl CaseMap for PyCase<'_> {
    fn upper(&self, s: &str) -> String {
        if s.is_ascii() {
            s.to_ascii_uppercase()
        } else {
            self.call(s, intern!(self.0, "upper"))
        }
    }
    fn lower(&self, s: &str) -> String {
        if s.is_ascii() {
            s.to_ascii_lowercase()
        } else {
            self.call(s, intern!(self.0, "lower"))
        }
    }
}

/// One Python string per distinct text in a batch. Events of a batch repeat the same program,
/// location and organisation names and the same location keys; sharing the objects saves the
/// decoding, the allocation and, for dict keys, the hashing of each repeat.
struct Strings<'py> {
    py: Python<'py>,
    seen: FxHashMap<String, Bound<'py, PyString>>,
}

impl<'py> Strings<'py> {
    fn new(py: Python<'py>) -> Self {
        Strings {
            py,
            seen: FxHashMap::with_capacity_and_hasher(256, Default::default()),
        }
    }

    fn get(&mut self, s: &str) -> Bound<'py, PyString> {
        if let Some(found) = self.seen.get(s) {
            return found.clone();
        }
        let made = PyString::new(self.py, s);
        // Bounded so that a batch of unique texts does not keep them all alive twice.
        if self.seen.len() < 4096 {
            self.seen.insert(s.to_owned(), made.clone());
        }
        made
    }

    fn text(&mut self, s: Option<&str>) -> Bound<'py, PyAny> {
        match s {
            Some(s) => self.get(s).into_any(),
            None => self.py.None().into_bound(self.py),
        }
    }

    fn written<T: AsRef<str>>(
        &mut self,
        value: &Written<T>,
        unset: &Bound<'py, PyAny>,
    ) -> Bound<'py, PyAny> {
        match value {
            None => unset.clone(),
            Some(v) => self.text(v.as_ref().map(|s| s.as_ref())),
        }
    }
}

fn date<'py>(py: Python<'py>, d: Option<Date>) -> PyResult<Bound<'py, PyAny>> {
    match d {
        Some(d) => Ok(PyDate::new(py, d.year, d.month, d.day)?.into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

fn timestamp<'py>(py: Python<'py>, ts: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
    match ts {
        Some(us) => Ok(us.into_pyobject(py)?.into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

fn to_python<'py>(
    py: Python<'py>,
    strings: &mut Strings<'py>,
    outcome: Outcome<'_>,
    unset: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    match outcome {
        Outcome::Upsert {
            row,
            write_ts,
            invalid_date,
        } => {
            let locations = match &row.user_locations {
                None => unset.clone(),
                Some(pairs) => {
                    let dict = PyDict::new(py);
                    for (k, v) in pairs {
                        dict.set_item(strings.get(k), strings.get(v))?;
                    }
                    dict.into_any()
                }
            };
            // Sized by the writer's column list: a column added there and not here (or the
            // reverse) does not compile.
            let values: [Bound<'py, PyAny>; writer::row::COLUMNS.len()] = [
                strings.get(&row.program_id).into_any(),
                PyString::new(py, &row.user_id).into_any(),
                strings.text(row.program_externalid.as_deref()),
                strings.text(row.program_name.as_deref()),
                pyo3::types::PyBool::new(py, row.pii_consent_required)
                    .to_owned()
                    .into_any(),
                locations,
                strings.written(&row.organisation_id, unset),
                strings.written(&row.organisation_name, unset),
                strings.written(&row.user_type, unset),
                strings.written(&row.user_sub_type, unset),
                date(py, row.created_at)?,
                date(py, row.updated_at)?,
            ];
            PyTuple::new(
                py,
                [
                    intern!(py, "upsert").clone().into_any(),
                    PyTuple::new(py, values)?.into_any(),
                    timestamp(py, write_ts)?,
                    pyo3::types::PyBool::new(py, invalid_date)
                        .to_owned()
                        .into_any(),
                ],
            )
        }
        Outcome::Delete {
            program_id,
            user_id,
            write_ts,
        } => PyTuple::new(
            py,
            [
                intern!(py, "delete").clone().into_any(),
                PyTuple::new(
                    py,
                    [PyString::new(py, &program_id), PyString::new(py, &user_id)],
                )?
                .into_any(),
                timestamp(py, write_ts)?,
                pyo3::types::PyBool::new(py, false).to_owned().into_any(),
            ],
        ),
        Outcome::Reject { reason, detail } => PyTuple::new(
            py,
            [
                intern!(py, "reject").clone().into_any(),
                PyString::intern(py, &reason).into_any(),
                PyString::new(py, &detail).into_any(),
                pyo3::types::PyBool::new(py, false).to_owned().into_any(),
            ],
        ),
    }
}

/// Flatten a batch of raw message values; see `dataflow/flatten/__init__.py` for the results.
#[pyfunction]
fn flatten_batch<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
    max_bytes: usize,
    unset: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let case = PyCase(py);
    let mut strings = Strings::new(py);
    let out = PyList::empty(py);
    for item in messages.iter() {
        let raw = item
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("flatten_batch takes a list of bytes"))?;
        let bytes = raw.as_bytes();
        // A bug in one message must not take the batch down: it becomes a rejection.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rules::flatten_message(bytes, max_bytes, &case)
        }))
        .unwrap_or_else(|_| Outcome::Reject {
            reason: "internal_error".into(),
            detail: "the Rust flattener failed on this message".into(),
        });
        out.append(to_python(py, &mut strings, outcome, unset)?)?;
    }
    Ok(out)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(flatten_batch, m)?)?;
    m.add_function(wrap_pyfunction!(py_writer::writer_columns, m)?)?;
    m.add_class::<py_writer::PyWriter>()?;
    m.add(
        "TlsHandshakeError",
        m.py().get_type::<py_writer::TlsHandshakeError>(),
    )?;
    Ok(())
}
