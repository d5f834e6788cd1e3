//! The field rules of spec §3-4, case by case, on the pure-Rust path (no Python, no server).

use super::*;

const MAX: usize = 1 << 20;

fn run(msg: &str) -> Outcome<'_> {
    flatten_message(msg.as_bytes(), MAX, &RustCase)
}

/// The reason code of a rejection (panics on anything else).
fn reason(msg: &str) -> String {
    match run(msg) {
        Outcome::Reject { reason, .. } => reason.into_owned(),
        other => panic!("{msg}: expected a rejection, got {other:?}"),
    }
}

fn upsert(msg: &str) -> (Row<'_>, Option<i64>, bool) {
    match run(msg) {
        Outcome::Upsert {
            row,
            write_ts,
            invalid_date,
        } => (*row, write_ts, invalid_date),
        other => panic!("{msg}: expected an upsert, got {other:?}"),
    }
}

fn row(msg: &str) -> Row<'_> {
    upsert(msg).0
}

/// An event with valid keys and `extra` fields spliced in. Leaked, so that the outcome (which
/// borrows from its message) can outlive the expression that built it: tests only.
fn event(extra: &str) -> &'static str {
    let sep = if extra.is_empty() { "" } else { "," };
    Box::leak(format!(r#"{{"programId":"p1","userId":"u1"{sep}{extra}}}"#).into_boxed_str())
}

fn profile(inner: &str) -> &'static str {
    event(&format!(r#""userProfile":{{{inner}}}"#))
}

fn some_text(s: &str) -> Option<Cow<'_, str>> {
    Some(Cow::Borrowed(s))
}

fn written(s: &str) -> Written<Cow<'_, str>> {
    Some(Some(Cow::Borrowed(s)))
}

fn location_pairs(msg: &str) -> Option<Vec<(String, String)>> {
    row(msg).user_locations.map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (k, v.into_owned()))
            .collect()
    })
}

fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn keys_missing_null_or_blank_are_missing_key() {
    assert_eq!(reason(r#"{"userId":"u"}"#), "missing_key:programId");
    assert_eq!(
        reason(r#"{"programId":null,"userId":"u"}"#),
        "missing_key:programId"
    );
    assert_eq!(
        reason(r#"{"programId":" \t\n","userId":"u"}"#),
        "missing_key:programId"
    );
    // Unicode White_Space counts as blank too (no-break space, ideographic space).
    assert_eq!(
        reason("{\"programId\":\"\u{a0}\u{3000}\",\"userId\":\"u\"}"),
        "missing_key:programId"
    );
    assert_eq!(reason(r#"{"programId":"p"}"#), "missing_key:userId");
    assert_eq!(
        reason(r#"{"programId":"p","userId":""}"#),
        "missing_key:userId"
    );
}

#[test]
fn keys_of_another_type_are_invalid_type() {
    for bad in ["1", "true", "{}", "[\"p\"]"] {
        assert_eq!(
            reason(&format!(r#"{{"programId":{bad},"userId":"u"}}"#)),
            "invalid_type:programId",
            "{bad}"
        );
        assert_eq!(
            reason(&format!(r#"{{"programId":"p","userId":{bad}}}"#)),
            "invalid_type:userId",
            "{bad}"
        );
    }
}

#[test]
fn keys_are_kept_as_written() {
    let r = row(r#"{"programId":" p 1 ","userId":"ü\u00e9"}"#);
    assert_eq!(r.program_id, " p 1 ");
    assert_eq!(r.user_id, "üé");
}

#[test]
fn message_level_checks_come_first() {
    let big = format!(
        r#"{{"programId":"p","userId":"u","pad":"{}"}}"#,
        "x".repeat(100)
    );
    assert!(matches!(
        flatten_message(big.as_bytes(), big.len(), &RustCase),
        Outcome::Upsert { .. }
    ));
    let Outcome::Reject { reason, detail } =
        flatten_message(big.as_bytes(), big.len() - 1, &RustCase)
    else {
        panic!("over the limit but not rejected")
    };
    assert_eq!(reason, "too_large");
    assert!(detail.contains(&big.len().to_string()), "{detail}");
    // Too large wins over malformed.
    let junk = b"{not json at all";
    assert!(matches!(
        flatten_message(junk, 4, &RustCase),
        Outcome::Reject { reason, .. } if reason == "too_large"
    ));
    assert!(matches!(
        flatten_message(junk, MAX, &RustCase),
        Outcome::Reject { reason, .. } if reason == "malformed_json"
    ));
    // Not UTF-8 (a lone continuation byte, an overlong encoding) is malformed.
    for raw in [
        &b"{\"programId\":\"\x80\"}"[..],
        &b"{\"a\":\"\xc0\xaf\"}"[..],
        &b"\xff"[..],
    ] {
        let Outcome::Reject { reason, detail } = flatten_message(raw, MAX, &RustCase) else {
            panic!("{raw:?} not rejected")
        };
        assert_eq!(reason, "malformed_json");
        assert!(detail.contains("UTF-8"), "{detail}");
    }
}

#[test]
fn json_that_is_not_an_object() {
    for (msg, kind) in [
        ("[]", "array"),
        ("\"x\"", "string"),
        ("1", "number"),
        ("null", "null"),
        ("true", "boolean"),
    ] {
        let Outcome::Reject { reason, detail } = run(msg) else {
            panic!("{msg} not rejected")
        };
        assert_eq!(reason, "not_an_object", "{msg}");
        assert!(detail.contains(kind), "{msg}: {detail}");
    }
    // Malformed wins over not-an-object.
    assert_eq!(reason("[1,]"), "malformed_json");
    assert_eq!(reason(""), "malformed_json");
    assert_eq!(
        reason(r#"{"programId":"p","userId":"u"} x"#),
        "malformed_json"
    );
}

#[test]
fn reasons_follow_the_order_of_the_spec() {
    let order = [
        ("programId", "1", "invalid_type:programId"),
        ("userId", "1", "invalid_type:userId"),
        ("programExternalId", "{}", "invalid_type:programExternalId"),
        ("programName", "[]", "invalid_type:programName"),
        (
            "requestForPIIConsent",
            "\"yes\"",
            "invalid_type:requestForPIIConsent",
        ),
        (
            "userProfile",
            r#"{"userLocations":{},"rootOrg":[],"profileUserTypes":{}}"#,
            "invalid_type:userProfile.userLocations",
        ),
    ];
    // Each message has every problem from one point of the list on: the first is reported,
    // whatever order the fields are written in.
    for start in 0..order.len() {
        let mut fields: Vec<String> = [r#""programId":"p""#, r#""userId":"u""#]
            .iter()
            .take(start)
            .map(|f| f.to_string())
            .collect();
        fields.extend(
            order[start..]
                .iter()
                .map(|(k, v, _)| format!("\"{k}\":{v}")),
        );
        for reverse in [false, true] {
            if reverse {
                fields.reverse();
            }
            let msg = format!("{{{}}}", fields.join(","));
            assert_eq!(reason(&msg), order[start].2, "{msg}");
        }
    }
    assert_eq!(
        reason(profile(r#""rootOrg":[],"profileUserTypes":{}"#)),
        "invalid_type:userProfile.rootOrg"
    );
    assert_eq!(
        reason(profile(r#""profileUserTypes":"x""#)),
        "invalid_type:userProfile.profileUserTypes"
    );
    assert_eq!(
        reason(event(r#""userProfile":[]"#)),
        "invalid_type:userProfile"
    );
    assert_eq!(
        reason(event(r#""userProfile":"x""#)),
        "invalid_type:userProfile"
    );
}

#[test]
fn text_coercion() {
    let r = row(event(r#""programExternalId":1.50,"programName":" Name ""#));
    assert_eq!(r.program_externalid, some_text("1.50"));
    assert_eq!(r.program_name, some_text(" Name "));
    let r = row(event(r#""programExternalId":false,"programName":"""#));
    assert_eq!(r.program_externalid, some_text("false"));
    assert_eq!(r.program_name, None);
    let r = row(event(r#""programExternalId":null,"programName":-1e3"#));
    assert_eq!(r.program_externalid, None);
    assert_eq!(r.program_name, some_text("-1e3"));
    assert_eq!(row(event("")).program_name, None);
}

#[test]
fn consent_flag() {
    for (value, expected) in [
        ("true", true),
        ("false", false),
        ("\"TRUE\"", true),
        ("\"True\"", true),
        ("\"fAlSe\"", false),
        ("null", false),
    ] {
        let r = row(event(&format!(r#""requestForPIIConsent":{value}"#)));
        assert_eq!(r.pii_consent_required, expected, "{value}");
    }
    assert!(!row(event("")).pii_consent_required);
    for bad in ["1", "\"yes\"", "\" true\"", "{}", "[]", "\"\""] {
        assert_eq!(
            reason(event(&format!(r#""requestForPIIConsent":{bad}"#))),
            "invalid_type:requestForPIIConsent",
            "{bad}"
        );
    }
}

#[test]
fn deletes_check_only_the_keys() {
    let msg = event(
        r#""deleted":true,"programName":{},"userProfile":7,"updatedAt":"2024-01-02T00:00:01Z""#,
    );
    assert_eq!(
        run(msg),
        Outcome::Delete {
            program_id: Cow::Borrowed("p1"),
            user_id: Cow::Borrowed("u1"),
            write_ts: Some(1_704_153_601_000_000),
        }
    );
    assert!(matches!(
        run(event(r#""deleted":true"#)),
        Outcome::Delete { write_ts: None, .. }
    ));
    assert_eq!(
        reason(r#"{"programId":"p","deleted":true}"#),
        "missing_key:userId"
    );
    // Only the boolean true deletes.
    for not_deleting in ["false", "\"true\"", "1", "null"] {
        assert!(
            matches!(
                run(event(&format!(r#""deleted":{not_deleting}"#))),
                Outcome::Upsert { .. }
            ),
            "{not_deleting}"
        );
    }
    // Last key wins here too.
    assert!(matches!(
        run(event(r#""deleted":true,"deleted":false"#)),
        Outcome::Upsert { .. }
    ));
}

#[test]
fn absent_parts_of_the_profile_are_not_written() {
    for msg in [event(""), event(r#""userProfile":null"#), profile("")] {
        let r = row(msg);
        assert_eq!(r.user_locations, None, "{msg}");
        assert_eq!(r.organisation_id, None);
        assert_eq!(r.organisation_name, None);
        assert_eq!(r.user_type, None);
        assert_eq!(r.user_sub_type, None);
    }
    let r = row(profile(
        r#""userLocations":null,"rootOrg":null,"profileUserTypes":null"#,
    ));
    assert_eq!(r.user_locations, None);
    assert_eq!(r.organisation_id, None);
    assert_eq!(r.user_type, None);
}

#[test]
fn location_map() {
    assert_eq!(
        location_pairs(profile(
            r#""userLocations":[
                {"type":"state","name":" Karnataka ","id":"s1","code":29},
                {"type":"district","name":"","id":null,"code":true},
                {"type":"Block","id":{"x":1},"name":["y"],"code":1.50},
                {"type":" ","name":"blank type"},
                {"type":7,"name":"number type"},
                {"name":"no type"},
                "not an object", 3, null, [],
                {"type":"state","name":"KA"}
            ]"#
        )),
        pairs(&[
            ("state_name", "KA"),
            ("state_id", "s1"),
            ("state_code", "29"),
            ("Block_code", "1.50"),
        ])
    );
    assert_eq!(location_pairs(profile(r#""userLocations":[]"#)), pairs(&[]));
}

#[test]
fn root_org_writes_both_columns() {
    let r = row(profile(r#""rootOrg":{"id":" o1 ","orgName":"Org"}"#));
    assert_eq!(r.organisation_id, written(" o1 "));
    assert_eq!(r.organisation_name, written("Org"));
    let r = row(profile(r#""rootOrg":{"id":7,"orgName":" "}"#));
    assert_eq!(r.organisation_id, Some(None));
    assert_eq!(r.organisation_name, Some(None));
    // rootOrg wins over organisations, even when its fields are empty.
    let r = row(profile(
        r#""rootOrg":{},"organisations":[{"isSchool":false,"organisationId":"x","orgName":"X"}]"#,
    ));
    assert_eq!(
        (r.organisation_id, r.organisation_name),
        (Some(None), Some(None))
    );
}

#[test]
fn organisations_fall_back_to_the_first_non_school() {
    let r = row(profile(
        r#""rootOrg":null,"organisations":[
            "x", {"isSchool":true,"organisationId":"school"},
            {"isSchool":"false","organisationId":"string flag"},
            {"organisationId":"no flag"},
            {"isSchool":false,"organisationId":"o2","orgName":""},
            {"isSchool":false,"organisationId":"o3","orgName":"later"}]"#,
    ));
    assert_eq!(r.organisation_id, written("o2"));
    assert_eq!(r.organisation_name, Some(None));
    for none in [
        r#""organisations":[{"isSchool":true,"organisationId":"s"}]"#,
        r#""organisations":{"isSchool":false,"organisationId":"o"}"#,
        r#""organisations":[]"#,
    ] {
        let r = row(profile(none));
        assert_eq!(
            (r.organisation_id, r.organisation_name),
            (None, None),
            "{none}"
        );
    }
}

#[test]
fn user_type_and_sub_type_case_rules() {
    let r = row(profile(
        r#""profileUserTypes":[
            {"type":"TEACHER","subType":"hm"},
            "skipped",
            {"type":"x","subType":" crp "},
            {"subType":"HM"},
            {"subType":""},{"subType":7},{"subType":null},
            {"type":"Administrator","subType":"chm"},
            {"type":"ÉLÈVE","subType":"éé"}]"#,
    ));
    assert_eq!(r.user_type, Some(Some("élève".to_string())));
    assert_eq!(r.user_sub_type, Some(Some("HM, CRP ,CHM,ÉÉ".to_string())));
}

#[test]
fn user_type_comes_only_from_the_last_element() {
    for last in [
        r#"{"subType":"a"}"#,
        r#"{"type":" "}"#,
        r#"{"type":1}"#,
        r#""teacher""#,
    ] {
        let r = row(profile(&format!(
            r#""profileUserTypes":[{{"type":"teacher"}},{last}]"#
        )));
        assert_eq!(r.user_type, Some(None), "{last}");
    }
    let r = row(profile(r#""profileUserTypes":[]"#));
    assert_eq!((r.user_type, r.user_sub_type), (Some(None), Some(None)));
    let r = row(profile(r#""profileUserTypes":[{"type":"t"}]"#));
    assert_eq!(r.user_sub_type, Some(None));
}

#[test]
fn dates_are_taken_as_written() {
    let (r, ts, invalid) = upsert(event(
        r#""createdAt":"2023-01-12T23:30:00-05:00","updatedAt":"2023-01-12T06:30:56.829Z""#,
    ));
    assert!(!invalid);
    let d = |y, m, d| {
        Some(Date {
            year: y,
            month: m,
            day: d,
        })
    };
    // No time-zone shift: the calendar date as written, even when UTC is the next day.
    assert_eq!(r.created_at, d(2023, 1, 12));
    assert_eq!(r.updated_at, d(2023, 1, 12));
    assert_eq!(ts, Some(1_673_505_056_829_000));

    let (r, ts, invalid) = upsert(event(
        r#""createdAt":{"$date":{"$numberLong":"0"}},"updatedAt":{"$date":"2024-02-29"}"#,
    ));
    assert!(!invalid);
    assert_eq!(r.created_at, d(1970, 1, 1));
    assert_eq!(r.updated_at, d(2024, 2, 29));
    assert_eq!(ts, Some(1_709_164_800_000_000));

    let (r, _, _) = upsert(event(
        r#""createdAt":1673505056829,"updatedAt":"2023-01-12""#,
    ));
    assert_eq!(r.created_at, d(2023, 1, 12));
}

#[test]
fn unusable_dates_are_null_and_counted() {
    for bad in [
        r#""2023-02-30""#,
        r#""2023-01-01T25:00""#,
        r#""12/01/2023""#,
        "1.6e12",
        "true",
        r#"{"$date":"2023-01-01","x":1}"#,
        r#"{"$date":{"$numberLong":1}}"#,
        "[]",
        "null",
    ] {
        let (r, ts, invalid) = upsert(event(&format!(
            r#""createdAt":"2023-01-01","updatedAt":{bad}"#
        )));
        assert!(invalid, "{bad}");
        assert_eq!(r.updated_at, None, "{bad}");
        assert_eq!(
            ts, None,
            "{bad}: no write timestamp from an unusable updatedAt"
        );
        assert!(r.created_at.is_some());
    }
    let (r, ts, invalid) = upsert(event(r#""updatedAt":"2023-01-01""#));
    assert!(invalid, "a missing createdAt is counted too");
    assert_eq!(r.created_at, None);
    assert_eq!(ts, Some(1_672_531_200_000_000));
}

#[test]
fn repeated_keys_resolve_to_the_last() {
    let r = row(
        r#"{"programId":null,"userId":"u","programId":"b","programName":"x","programName":"y"}"#,
    );
    assert_eq!(r.program_id, "b");
    assert_eq!(r.program_name, some_text("y"));
    assert_eq!(
        reason(r#"{"programId":"a","userId":"u","programId":" "}"#),
        "missing_key:programId"
    );
    let r = row(profile(
        r#""rootOrg":{"id":"a","id":"b","orgName":"n"},"rootOrg":{"id":"c"}"#,
    ));
    assert_eq!(r.organisation_id, written("c"));
    assert_eq!(r.organisation_name, Some(None));
}

#[test]
fn unknown_fields_are_ignored_whatever_they_hold() {
    let big = format!(
        r#""_id":"x","__v":0,"appInformation":{{"a":[{}1{}]}},"blob":"{}""#,
        "[".repeat(50),
        "]".repeat(50),
        "y".repeat(200_000)
    );
    let r = row(event(&big));
    assert_eq!(r.program_id, "p1");
    // But they must still be valid JSON.
    assert_eq!(
        reason(event(r#""appInformation":{"a":NaN}"#)),
        "malformed_json"
    );
    assert_eq!(
        reason(event(&format!(
            r#""deep":{}{}"#,
            "[".repeat(100),
            "]".repeat(100)
        ))),
        "malformed_json"
    );
}
