//! One input = one Kafka message value. Any panic, abort, stack overflow, timeout or memory
//! blow-up is a finding; the outcome itself must keep the contract checked below.
#![no_main]

use flatten_rs::rules::{flatten_message, Outcome, RustCase};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    match flatten_message(data, LIMIT, &RustCase) {
        Outcome::Reject { reason, .. } => {
            assert!(!reason.is_empty());
            if data.len() <= LIMIT {
                assert_ne!(reason, "too_large");
            }
        }
        // An accepted message was valid UTF-8 within the limit, and names its keys.
        Outcome::Upsert { row, .. } => {
            assert!(data.len() <= LIMIT && std::str::from_utf8(data).is_ok());
            assert!(!row.program_id.trim().is_empty() && !row.user_id.trim().is_empty());
        }
        Outcome::Delete {
            program_id,
            user_id,
            ..
        } => {
            assert!(data.len() <= LIMIT && std::str::from_utf8(data).is_ok());
            assert!(!program_id.trim().is_empty() && !user_id.trim().is_empty());
        }
    }
});
