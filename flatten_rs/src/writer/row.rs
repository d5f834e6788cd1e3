//! A flattened outcome as the values of one prepared statement, owned so that it can outlive
//! the consumed batch while the request is in flight.

use std::collections::BTreeMap;

use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::value::{CqlDate, MaybeUnset};
use scylla::SerializeRow;

use crate::rules::{Outcome, Row, Written};
use crate::writer::stamp;

/// Values of `INSERT INTO t (<COLUMNS>) VALUES (?, …) USING TIMESTAMP ?`, bound by position
/// in column order (the statement is built from [`COLUMNS`]).
#[derive(Debug, Clone, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct InsertValues {
    pub program_id: String,
    pub user_id: String,
    pub program_externalid: Option<String>,
    pub program_name: Option<String>,
    pub pii_consent_required: bool,
    pub user_locations: MaybeUnset<BTreeMap<String, String>>,
    pub organisation_id: MaybeUnset<Option<String>>,
    pub organisation_name: MaybeUnset<Option<String>>,
    pub user_type: MaybeUnset<Option<String>>,
    pub user_sub_type: MaybeUnset<Option<String>>,
    pub created_at: Option<CqlDate>,
    pub updated_at: Option<CqlDate>,
    pub write_ts: i64,
}

/// Values of `DELETE FROM t USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?`.
pub type DeleteValues = (i64, String, String);

/// The column names the insert binds, in order. The table's definition is `TABLE` in
/// dataflow/schema.py: `dataflow.flatten.native()` refuses a build whose list differs from it.
pub const COLUMNS: [&str; 12] = [
    "program_id",
    "user_id",
    "program_externalid",
    "program_name",
    "pii_consent_required",
    "user_locations",
    "organisation_id",
    "organisation_name",
    "user_type",
    "user_sub_type",
    "created_at",
    "updated_at",
];

#[derive(Debug, Clone)]
pub enum Op {
    Upsert(Box<InsertValues>),
    Delete(DeleteValues),
}

impl Op {
    pub fn program_id(&self) -> &str {
        match self {
            Op::Upsert(v) => &v.program_id,
            Op::Delete(v) => &v.1,
        }
    }

    pub fn is_upsert(&self) -> bool {
        matches!(self, Op::Upsert(_))
    }

    pub fn write_timestamp(&self) -> i64 {
        match self {
            Op::Upsert(v) => v.write_ts,
            Op::Delete(v) => v.0,
        }
    }
}

impl SerializeRow for Op {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            Op::Upsert(v) => v.serialize(ctx, writer),
            Op::Delete(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// One write of a consumed batch; `index` is the message's position in that batch.
#[derive(Debug, Clone)]
pub struct RowWrite {
    pub index: u32,
    pub op: Op,
}

/// What a message turned into on the Rust side.
#[derive(Debug)]
pub enum Planned {
    Write { op: Op, invalid_date: bool },
    Reject { reason: String, detail: String },
}

fn date(d: Option<crate::dates::Date>) -> Option<CqlDate> {
    // CQL counts days from 2^31 days before the epoch; every date we accept fits.
    d.map(|d| CqlDate((d.days_since_epoch() + (1_i64 << 31)) as u32))
}

fn written<T: AsRef<str>>(w: Written<T>) -> MaybeUnset<Option<String>> {
    match w {
        None => MaybeUnset::Unset,
        Some(v) => MaybeUnset::Set(v.map(|s| s.as_ref().to_owned())),
    }
}

fn insert_values(row: Row<'_>, ts: i64) -> InsertValues {
    let locations = match row.user_locations {
        None => MaybeUnset::Unset,
        Some(pairs) => MaybeUnset::Set(
            pairs
                .into_iter()
                .map(|(k, v)| (k, v.into_owned()))
                .collect(),
        ),
    };
    InsertValues {
        program_id: row.program_id.into_owned(),
        user_id: row.user_id.into_owned(),
        program_externalid: row.program_externalid.map(|s| s.into_owned()),
        program_name: row.program_name.map(|s| s.into_owned()),
        pii_consent_required: row.pii_consent_required,
        user_locations: locations,
        organisation_id: written(row.organisation_id),
        organisation_name: written(row.organisation_name),
        user_type: written(row.user_type),
        user_sub_type: written(row.user_sub_type),
        created_at: date(row.created_at),
        updated_at: date(row.updated_at),
        write_ts: ts,
    }
}

/// Turn the rules' outcome into a statement's values, stamping it by spec §3.4.
/// `kafka_ts_ms` is the message's Kafka timestamp (None when it has none).
pub fn plan(
    outcome: Outcome<'_>,
    kafka_ts_ms: Option<i64>,
    clock_us: i64,
    offset_us: i64,
) -> Planned {
    match outcome {
        Outcome::Upsert {
            row,
            write_ts,
            invalid_date,
        } => {
            let ts = stamp::write_timestamp(write_ts, kafka_ts_ms, clock_us, offset_us);
            Planned::Write {
                op: Op::Upsert(Box::new(insert_values(*row, ts))),
                invalid_date,
            }
        }
        Outcome::Delete {
            program_id,
            user_id,
            write_ts,
        } => {
            let ts = stamp::write_timestamp(write_ts, kafka_ts_ms, clock_us, offset_us);
            Planned::Write {
                op: Op::Delete((ts, program_id.into_owned(), user_id.into_owned())),
                invalid_date: false,
            }
        }
        Outcome::Reject { reason, detail } => Planned::Reject {
            reason: reason.into_owned(),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{flatten_message, RustCase};

    fn planned(msg: &str) -> Planned {
        plan(
            flatten_message(msg.as_bytes(), 1 << 20, &RustCase),
            Some(1_000),
            2_000_000_000_000_000,
            0,
        )
    }

    #[test]
    fn absent_columns_are_unset_and_nulls_are_set() {
        let Planned::Write {
            op: Op::Upsert(v),
            invalid_date,
        } = planned(
            r#"{"programId":"p","userId":"u","programName":"","updatedAt":"2024-01-02T00:00:00Z",
                "createdAt":"2024-01-01"}"#,
        )
        else {
            panic!("not an upsert");
        };
        assert!(!invalid_date);
        assert_eq!(v.program_id, "p");
        assert_eq!(v.program_name, None, "blank text is written as null");
        assert!(
            matches!(v.user_locations, MaybeUnset::Unset),
            "no userProfile: locations untouched"
        );
        assert!(matches!(v.organisation_id, MaybeUnset::Unset));
        assert!(matches!(v.user_type, MaybeUnset::Unset));
        // 2024-01-02 is day 19724 after the epoch.
        assert_eq!(v.updated_at, Some(CqlDate((19_724_i64 + (1 << 31)) as u32)));
        assert_eq!(v.write_ts, 1_704_153_600_000_000);
    }

    #[test]
    fn root_org_writes_both_columns_even_when_null() {
        let Planned::Write {
            op: Op::Upsert(v), ..
        } = planned(
            r#"{"programId":"p","userId":"u","userProfile":{"rootOrg":{"id":"o1","orgName":" "},
                "userLocations":[{"type":"state","name":"KA","id":"s1"}]}}"#,
        )
        else {
            panic!("not an upsert");
        };
        assert!(matches!(&v.organisation_id, MaybeUnset::Set(Some(s)) if s == "o1"));
        assert!(matches!(v.organisation_name, MaybeUnset::Set(None)));
        let MaybeUnset::Set(map) = &v.user_locations else {
            panic!("locations unset")
        };
        assert_eq!(map.get("state_name").map(String::as_str), Some("KA"));
        assert_eq!(map.get("state_id").map(String::as_str), Some("s1"));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn missing_updated_at_falls_back_to_the_kafka_timestamp() {
        let Planned::Write { op, invalid_date } = planned(r#"{"programId":"p","userId":"u"}"#)
        else {
            panic!("not a write");
        };
        assert!(invalid_date);
        assert_eq!(op.write_timestamp(), 1_000_000);
    }

    #[test]
    fn rejections_keep_their_reason() {
        assert!(matches!(
            planned(r#"{"programId":"p","userId":42}"#),
            Planned::Reject { reason, .. } if reason == "invalid_type:userId"
        ));
    }
}
