//! Which write errors are the row's fault (never retried: the row goes to the failed topic)
//! and which are Cassandra's state (retried with backoff for as long as they last).

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// The same request fails the same way every time, e.g. a partition key over 64 KiB or a
    /// batch over the server's size limit.
    Permanent,
    /// Timeouts, unavailability, overload, lost connections: wait and send again. The label
    /// names the kind, for `pui_cassandra_errors_total{kind}`.
    Transient(&'static str),
}

pub fn classify(err: &ExecutionError) -> Class {
    match err {
        ExecutionError::BadQuery(_) => Class::Permanent,
        ExecutionError::LastAttemptError(attempt) => classify_attempt(attempt),
        ExecutionError::RequestTimeout(_) => Class::Transient("OperationTimedOut"),
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => {
            Class::Transient("NoHostAvailable")
        }
        _ => Class::Transient("Other"),
    }
}

fn classify_attempt(err: &RequestAttemptError) -> Class {
    match err {
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => Class::Permanent,
        RequestAttemptError::DbError(db, _) => classify_db(db),
        RequestAttemptError::BrokenConnectionError(_) => Class::Transient("ConnectionShutdown"),
        _ => Class::Transient("Other"),
    }
}

/// The server's verdicts: `Invalid` (an `InvalidRequest` to the Python driver) and syntax
/// errors are permanent, as in the Python engine; everything else may pass later.
pub fn classify_db(err: &DbError) -> Class {
    match err {
        DbError::Invalid | DbError::SyntaxError => Class::Permanent,
        DbError::WriteTimeout { .. } => Class::Transient("WriteTimeout"),
        DbError::Unavailable { .. } => Class::Transient("Unavailable"),
        DbError::Overloaded | DbError::RateLimitReached { .. } => Class::Transient("Overloaded"),
        DbError::WriteFailure { .. } => Class::Transient("WriteFailure"),
        DbError::IsBootstrapping => Class::Transient("IsBootstrapping"),
        DbError::AuthenticationError | DbError::Unauthorized => Class::Transient("Unauthorized"),
        _ => Class::Transient("Other"),
    }
}

/// One line for logs and the failed topic's `error.detail` header.
pub fn describe(err: &ExecutionError) -> String {
    let mut text = err.to_string().replace(['\n', '\r'], " ");
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::BadQuery;

    #[test]
    fn invalid_requests_are_the_rows_fault() {
        let e = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "Key length of 70000 is longer than maximum of 65535".into(),
        ));
        assert_eq!(classify(&e), Class::Permanent);
        assert!(describe(&e).contains("Key length"));
        assert_eq!(
            classify(&ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(
                70_000, 65_535
            ))),
            Class::Permanent
        );
    }

    #[test]
    fn server_state_is_retried() {
        assert_eq!(
            classify_db(&DbError::Overloaded),
            Class::Transient("Overloaded")
        );
        assert_eq!(
            classify(&ExecutionError::RequestTimeout(
                std::time::Duration::from_secs(1)
            )),
            Class::Transient("OperationTimedOut")
        );
        assert_eq!(
            classify(&ExecutionError::EmptyPlan),
            Class::Transient("NoHostAvailable")
        );
    }

    #[test]
    fn details_are_one_bounded_line() {
        let e = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            format!("a\nb{}", "é".repeat(400)),
        ));
        let d = describe(&e);
        assert!(!d.contains('\n'));
        assert!(d.len() <= 300);
    }
}
