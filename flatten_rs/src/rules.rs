//! The field rules of spec §3-4: a parsed event becomes an upsert, a delete or a rejection.

use std::borrow::Cow;

use crate::dates::{self, Date, Stamp};
use crate::json::{self, Value};

/// Upper/lower-casing is delegated so that both engines use the same Unicode tables.
pub trait CaseMap {
    fn upper(&self, s: &str) -> String;
    fn lower(&self, s: &str) -> String;
}

/// Rust's own tables; used by the Rust tests only (the extension uses Python's).
pub struct RustCase;

impl CaseMap for RustCase {
    fn upper(&self, s: &str) -> String {
        s.to_uppercase()
    }
    fn lower(&self, s: &str) -> String {
        s.to_lowercase()
    }
}

/// `None` = the column is not written; `Some(None)` = written as null.
pub type Written<T> = Option<Option<T>>;

#[derive(Debug, PartialEq)]
pub struct Row<'a> {
    pub program_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub program_externalid: Option<Cow<'a, str>>,
    pub program_name: Option<Cow<'a, str>>,
    pub pii_consent_required: bool,
    pub user_locations: Option<Vec<(String, Cow<'a, str>)>>,
    pub organisation_id: Written<Cow<'a, str>>,
    pub organisation_name: Written<Cow<'a, str>>,
    pub user_type: Written<String>,
    pub user_sub_type: Written<String>,
    pub created_at: Option<Date>,
    pub updated_at: Option<Date>,
}

#[derive(Debug, PartialEq)]
pub enum Outcome<'a> {
    Upsert {
        row: Box<Row<'a>>,
        write_ts: Option<i64>,
        invalid_date: bool,
    },
    Delete {
        program_id: Cow<'a, str>,
        user_id: Cow<'a, str>,
        write_ts: Option<i64>,
    },
    Reject {
        reason: Cow<'static, str>,
        detail: String,
    },
}

fn reject<T>(
    reason: impl Into<Cow<'static, str>>,
    detail: impl Into<String>,
) -> Result<T, Outcome<'static>> {
    Err(Outcome::Reject {
        reason: reason.into(),
        detail: detail.into(),
    })
}

/// "Blank": empty after trimming Unicode White_Space (Rust's `char::is_whitespace`).
fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

fn kind(v: &Value<'_>) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Num(_) => "number",
        Value::Str(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) | Value::Skipped => "object",
    }
}

fn key_field<'a>(event: &Value<'a>, name: &'static str) -> Result<Cow<'a, str>, Outcome<'static>> {
    match event.get(name) {
        Some(Value::Str(s)) if !is_blank(s) => Ok(s.clone()),
        Some(Value::Str(_)) => reject(format!("missing_key:{name}"), format!("{name} is blank")),
        None | Some(Value::Null) => reject(
            format!("missing_key:{name}"),
            format!("{name} is missing or null"),
        ),
        Some(other) => reject(
            format!("invalid_type:{name}"),
            format!("{name} must be a string, not a {}", kind(other)),
        ),
    }
}

fn text<'a>(
    value: Option<&Value<'a>>,
    path: &'static str,
) -> Result<Option<Cow<'a, str>>, Outcome<'static>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) if s.is_empty() => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(Value::Num(n)) => Ok(Some(Cow::Borrowed(n))),
        Some(Value::Bool(b)) => Ok(Some(Cow::Borrowed(if *b { "true" } else { "false" }))),
        Some(other) => reject(
            format!("invalid_type:{path}"),
            format!("{path} must be text, not a {}", kind(other)),
        ),
    }
}

fn consent(value: Option<&Value<'_>>) -> Result<bool, Outcome<'static>> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Str(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::Str(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => reject(
            "invalid_type:requestForPIIConsent",
            "requestForPIIConsent must be a boolean or \"true\"/\"false\"",
        ),
    }
}

fn plain_string<'a>(value: Option<&Value<'a>>) -> Option<Cow<'a, str>> {
    match value {
        Some(Value::Str(s)) if !is_blank(s) => Some(s.clone()),
        _ => None,
    }
}

fn locations<'a>(items: &[Value<'a>]) -> Vec<(String, Cow<'a, str>)> {
    let mut out: Vec<(String, Cow<'a, str>)> = Vec::new();
    for item in items {
        let Some(Value::Str(kind)) = item.get("type") else {
            continue;
        };
        if is_blank(kind) {
            continue;
        }
        for attr in ["name", "id", "code"] {
            let value = match item.get(attr) {
                Some(Value::Str(s)) if !is_blank(s) => s.clone(),
                Some(Value::Num(n)) => Cow::Borrowed(*n),
                _ => continue,
            };
            let mut key = String::with_capacity(kind.len() + 1 + attr.len());
            key.push_str(kind);
            key.push('_');
            key.push_str(attr);
            // Overwrite in place: the key keeps its first position, like a Python dict.
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => out.push((key, value)),
            }
        }
    }
    out
}

fn user_types(items: &[Value<'_>], case: &dyn CaseMap) -> (Option<String>, Option<String>) {
    let user_type = match items.last() {
        Some(last @ Value::Object(_)) => match last.get("type") {
            Some(Value::Str(t)) if !is_blank(t) => Some(case.lower(t)),
            _ => None,
        },
        _ => None,
    };
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if let Some(Value::Str(s)) = item.get("subType") {
            if !is_blank(s) {
                let up = case.upper(s);
                if !seen.contains(&up) {
                    seen.push(up);
                }
            }
        }
    }
    let sub = if seen.is_empty() {
        None
    } else {
        Some(seen.join(","))
    };
    (user_type, sub)
}

type Org<'a> = (Written<Cow<'a, str>>, Written<Cow<'a, str>>);

fn organisation<'a>(profile: Option<&Value<'a>>) -> Org<'a> {
    let Some(profile) = profile else {
        return (None, None);
    };
    if let Some(root @ Value::Object(_)) = profile.get("rootOrg") {
        return (
            Some(plain_string(root.get("id"))),
            Some(plain_string(root.get("orgName"))),
        );
    }
    if let Some(Value::Array(orgs)) = profile.get("organisations") {
        for org in orgs {
            if matches!(org, Value::Object(_)) && org.get("isSchool") == Some(&Value::Bool(false)) {
                return (
                    Some(plain_string(org.get("organisationId"))),
                    Some(plain_string(org.get("orgName"))),
                );
            }
        }
    }
    (None, None)
}

fn check_type(
    value: Option<&Value<'_>>,
    ok: fn(&Value<'_>) -> bool,
    reason: &'static str,
    what: &'static str,
) -> Result<(), Outcome<'static>> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(v) if ok(v) => Ok(()),
        Some(v) => reject(
            reason,
            format!("{} must be {what}, not a {}", &reason[13..], kind(v)),
        ),
    }
}

fn is_object(v: &Value<'_>) -> bool {
    matches!(v, Value::Object(_))
}

fn is_array(v: &Value<'_>) -> bool {
    matches!(v, Value::Array(_))
}

/// Everything after the message-level checks.
fn evaluate<'a>(event: &Value<'a>, case: &dyn CaseMap) -> Result<Outcome<'a>, Outcome<'static>> {
    let program_id = key_field(event, "programId")?;
    let user_id = key_field(event, "userId")?;
    let updated: Option<Stamp> = dates::parse(event.get("updatedAt"));
    let write_ts = updated.map(|(_, us)| us);
    if event.get("deleted") == Some(&Value::Bool(true)) {
        return Ok(Outcome::Delete {
            program_id,
            user_id,
            write_ts,
        });
    }
    let program_externalid = text(event.get("programExternalId"), "programExternalId")?;
    let program_name = text(event.get("programName"), "programName")?;
    let pii_consent_required = consent(event.get("requestForPIIConsent"))?;

    let profile = event.get("userProfile");
    check_type(profile, is_object, "invalid_type:userProfile", "an object")?;
    let profile = profile.filter(|p| is_object(p));
    let locs = profile.and_then(|p| p.get("userLocations"));
    check_type(
        locs,
        is_array,
        "invalid_type:userProfile.userLocations",
        "an array",
    )?;
    let root = profile.and_then(|p| p.get("rootOrg"));
    check_type(
        root,
        is_object,
        "invalid_type:userProfile.rootOrg",
        "an object",
    )?;
    let types = profile.and_then(|p| p.get("profileUserTypes"));
    check_type(
        types,
        is_array,
        "invalid_type:userProfile.profileUserTypes",
        "an array",
    )?;

    let (organisation_id, organisation_name) = organisation(profile);
    let (user_type, user_sub_type) = match types {
        Some(Value::Array(items)) => {
            let (t, s) = user_types(items, case);
            (Some(t), Some(s))
        }
        _ => (None, None),
    };
    let user_locations = match locs {
        Some(Value::Array(items)) => Some(locations(items)),
        _ => None,
    };
    let created = dates::parse(event.get("createdAt"));
    Ok(Outcome::Upsert {
        row: Box::new(Row {
            program_id,
            user_id,
            program_externalid,
            program_name,
            pii_consent_required,
            user_locations,
            organisation_id,
            organisation_name,
            user_type,
            user_sub_type,
            created_at: created.map(|(d, _)| d),
            updated_at: updated.map(|(d, _)| d),
        }),
        write_ts,
        invalid_date: created.is_none() || updated.is_none(),
    })
}

/// One message's outcome. `event` is the parsed value, or the parse error.
pub fn outcome<'a>(parsed: Result<Value<'a>, Outcome<'static>>, case: &dyn CaseMap) -> Outcome<'a> {
    let event = match parsed {
        Ok(v) => v,
        Err(rejection) => return rejection,
    };
    if !matches!(event, Value::Object(_)) {
        return Outcome::Reject {
            reason: Cow::Borrowed("not_an_object"),
            detail: format!("the message is a JSON {}, not an object", kind(&event)),
        };
    }
    // `evaluate` clones the `Cow`s it keeps: borrowed ones point into the input, not `event`.
    evaluate(&event, case).unwrap_or_else(|rejection| rejection)
}

/// Parse a raw message and apply every rule.
pub fn flatten_message<'a>(raw: &'a [u8], max_bytes: usize, case: &dyn CaseMap) -> Outcome<'a> {
    if raw.len() > max_bytes {
        return Outcome::Reject {
            reason: Cow::Borrowed("too_large"),
            detail: format!("message is {} bytes, the limit is {max_bytes}", raw.len()),
        };
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => {
            return Outcome::Reject {
                reason: Cow::Borrowed("malformed_json"),
                detail: format!("not UTF-8 at byte {}", e.valid_up_to()),
            }
        }
    };
    let parsed = json::parse(text).map_err(|e| Outcome::Reject {
        reason: Cow::Borrowed("malformed_json"),
        detail: e.0,
    });
    outcome(parsed, case)
}

#[cfg(test)]
mod tests;
