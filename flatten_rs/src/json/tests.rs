//! The scanner's contract (spec §3: strict RFC 8259, last key wins, depth at most 100), checked
//! on the parser alone so that a failure names the JSON case rather than a rule.

use super::*;

/// A top-level array keeps every item whole, so scalars and containers can be checked through
/// it without the event's key filter getting in the way.
fn item(json: &str) -> Value<'_> {
    match parse(json) {
        Ok(Value::Array(mut items)) if items.len() == 1 => items.remove(0),
        other => panic!("{json}: expected a one-item array, got {other:?}"),
    }
}

fn string(json: &str) -> String {
    match item(json) {
        Value::Str(s) => s.into_owned(),
        other => panic!("{json}: not a string: {other:?}"),
    }
}

fn fails(json: &str) -> String {
    match parse(json) {
        Err(Error(msg)) => msg,
        Ok(v) => panic!("{json:?} parsed as {v:?}, expected an error"),
    }
}

#[test]
fn simple_escapes_are_decoded() {
    assert_eq!(
        string(r#"["a\"b\\c\/d\be\ff\ng\rh\ti"]"#),
        "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti"
    );
}

#[test]
fn strings_without_escapes_borrow_from_the_input() {
    assert!(matches!(
        item(r#"["plain é"]"#),
        Value::Str(Cow::Borrowed("plain é"))
    ));
    assert!(matches!(item(r#"["a\nb"]"#), Value::Str(Cow::Owned(_))));
}

#[test]
fn unicode_escapes_and_raw_utf8() {
    assert_eq!(string(r#"["\u00e9\u00E9"]"#), "éé");
    assert_eq!(string(r#"["\u0000"]"#), "\0");
    assert_eq!(string(r#"["\uffff"]"#), "\u{ffff}");
    assert_eq!(string("[\"ಕನ್ನಡ 😀\"]"), "ಕನ್ನಡ 😀");
}

#[test]
fn surrogate_pairs_combine_and_lone_halves_are_refused() {
    assert_eq!(string(r#"["\ud83d\ude00"]"#), "😀");
    assert_eq!(string(r#"["x\uD83D\uDE00y"]"#), "x😀y");
    assert_eq!(string(r#"["\udbff\udfff"]"#), "\u{10ffff}");
    for bad in [
        r#"["\ud83d"]"#,
        r#"["\ud83dx"]"#,
        r#"["\ude00"]"#,
        r#"["\ud83d\u0041"]"#,
        r#"["\ud83d\ud83d"]"#,
        r#"["\ud83d\n"]"#,
    ] {
        assert!(fails(bad).contains("surrogate"), "{bad}");
    }
    // Validated even where the value is not kept.
    assert!(fails(r#"{"ignored":"\ude00"}"#).contains("surrogate"));
    assert!(fails(r#"{"ignored\ud800":1}"#).contains("surrogate"));
}

#[test]
fn bad_escapes_and_control_characters_are_refused() {
    for bad in [
        r#"["\x"]"#,
        r#"["\u12G4"]"#,
        r#"["\u12"]"#,
        r#"["\U0041"]"#,
        r#"["\'"]"#,
    ] {
        assert!(fails(bad).contains("escape"), "{bad}");
    }
    assert!(fails("[\"a\nb\"]").contains("control character"));
    assert!(fails("[\"a\tb\"]").contains("control character"));
    assert!(fails("{\"ignored\":\"\u{1}\"}").contains("control character"));
    assert_eq!(fails(r#"["abc"#), "unterminated string");
    assert_eq!(fails(r#"["abc\""#), "unterminated string");
    assert!(fails(r#"["abc\"#).contains("escape"));
}

/// The eight-bytes-at-a-time search must find a quote, backslash or control byte wherever it
/// falls, and must not stop at UTF-8 bytes (all >= 0x80).
#[test]
fn special_bytes_are_found_at_every_position() {
    for len in 0..40 {
        for at in 0..len {
            let mut body = "a".repeat(len);
            body.replace_range(at..=at, "\"");
            let escaped = body.replace('"', "\\\"");
            assert_eq!(
                string(&format!("[\"{escaped}\"]")),
                body,
                "len {len} at {at}"
            );

            let mut ctl = "b".repeat(len).into_bytes();
            ctl[at] = 0x1f;
            let doc = format!("[\"{}\"]", String::from_utf8(ctl).unwrap());
            assert!(
                fails(&doc).contains("control character"),
                "len {len} at {at}"
            );
        }
        let wide = "é".repeat(len);
        assert_eq!(string(&format!("[\"{wide}\"]")), wide);
        assert_eq!(special_byte(wide.as_bytes(), 0), wide.len());
    }
    assert_eq!(special_byte(b"0123456789\x00", 0), 10);
    assert_eq!(special_byte(b"0123456789\\", 3), 10);
}

/// The word-at-a-time search agrees with a byte-by-byte one for every byte value, and for
/// pairs of awkward bytes (a borrow out of one byte must not hide or invent a hit in another).
#[test]
fn special_byte_agrees_with_a_plain_scan() {
    let naive = |b: &[u8], from: usize| {
        (from..b.len())
            .find(|&i| b[i] == b'"' || b[i] == b'\\' || b[i] < 0x20)
            .unwrap_or(b.len())
    };
    for value in 0..=255u8 {
        for at in 0..20 {
            let mut b = vec![b'a'; 20];
            b[at] = value;
            for from in [0, 1, 7, 8] {
                assert_eq!(
                    special_byte(&b, from),
                    naive(&b, from),
                    "{value:#x} at {at}"
                );
            }
        }
    }
    let awkward = [
        0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xa0, 0xff,
    ];
    for &first in &awkward {
        for &second in &awkward {
            for i in 0..10 {
                for j in i + 1..11 {
                    let mut b = vec![b'z'; 11];
                    b[i] = first;
                    b[j] = second;
                    assert_eq!(
                        special_byte(&b, 0),
                        naive(&b, 0),
                        "{first:#x}@{i} {second:#x}@{j}"
                    );
                }
            }
        }
    }
}

#[test]
fn numbers_keep_their_text() {
    for ok in [
        "0",
        "-0",
        "7",
        "-12",
        "1.50",
        "0.0",
        "1e10",
        "1E+2",
        "-3.5e-7",
        "10000000000000000000000",
    ] {
        assert_eq!(item(&format!("[{ok}]")), Value::Num(ok), "{ok}");
    }
}

#[test]
fn invalid_numbers_are_refused() {
    for bad in [
        "01",
        "-",
        "+1",
        "1.",
        ".5",
        "1e",
        "1e+",
        "-a",
        "0x10",
        "NaN",
        "Infinity",
        "-Infinity",
        "1.e3",
        "--1",
    ] {
        fails(&format!("[{bad}]"));
        fails(bad);
        // Also where the value is skipped.
        fails(&format!("{{\"ignored\":[{bad}]}}"));
    }
}

#[test]
fn literals_must_be_exact() {
    assert_eq!(item("[true]"), Value::Bool(true));
    assert_eq!(item("[false]"), Value::Bool(false));
    assert_eq!(item("[null]"), Value::Null);
    for bad in [
        "[tru]",
        "[True]",
        "[nul]",
        "[falsey]",
        "[nil]",
        "{\"ignored\":fals}",
    ] {
        fails(bad);
    }
}

#[test]
fn grammar_errors_are_refused_in_kept_and_skipped_values() {
    for body in [
        "[1,]",
        "[,1]",
        "[1 2]",
        "[}",
        "{]",
        "{,}",
        r#"{"a" 1}"#,
        r#"{"a":1,}"#,
        r#"{"a":}"#,
        r#"{a:1}"#,
        r#"{'a':1}"#,
        r#"{"a":1 "b":2}"#,
        "[[]",
    ] {
        fails(body);
        fails(&format!("[{body}]"));
        fails(&format!("{{\"ignored\":{body}}}"));
        fails(&format!("{{\"userProfile\":{{\"ignored\":{body}}}}}"));
    }
}

#[test]
fn whole_input_must_be_one_value() {
    assert!(fails("").contains("end of input"));
    assert!(fails("  \n\t").contains("end of input"));
    assert!(fails("{} {}").contains("after the JSON value"));
    assert!(fails("{}x").contains("after the JSON value"));
    assert!(fails("\u{feff}{}").contains("unexpected character"));
    assert_eq!(parse(" \r\n\t{}\n "), Ok(Value::Object(vec![])));
}

/// Every proper prefix of a message is an error: a truncated message is never half-applied.
#[test]
fn every_truncation_is_refused() {
    let doc = r#"{"programId":"p\u00e9","userId":"ü\ud83d\ude00","deleted":false,
        "createdAt":{"$date":{"$numberLong":"1673505056829"}},"updatedAt":-1.5e3,
        "userProfile":{"userLocations":[{"type":"state","name":"KA","id":12}],
        "rootOrg":{"id":"o","orgName":null},"other":[[{"x":[true,null]}]]},"_id":"x"}"#;
    assert!(parse(doc).is_ok());
    for end in (0..doc.len()).filter(|&end| doc.is_char_boundary(end)) {
        assert!(parse(&doc[..end]).is_err(), "prefix of {end} bytes parsed");
    }
}

#[test]
fn nesting_is_limited_to_100_levels() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(parse(&nested(MAX_DEPTH)).is_ok());
    assert!(fails(&nested(MAX_DEPTH + 1)).contains("nesting"));
    // Under an ignored key the value starts at depth 2: 99 more levels are allowed.
    let skipped = |n: usize| format!("{{\"ignored\":{}}}", nested(n));
    assert!(parse(&skipped(MAX_DEPTH - 1)).is_ok());
    assert!(fails(&skipped(MAX_DEPTH)).contains("nesting"));
    let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    assert!(parse(&objects(MAX_DEPTH)).is_ok());
    assert!(fails(&objects(MAX_DEPTH + 1)).contains("nesting"));
    // Objects on the kept path (inside a top-level array everything is kept).
    let kept = |n: usize| format!("[{}]", objects(n - 1));
    assert!(parse(&kept(MAX_DEPTH)).is_ok());
    assert!(fails(&kept(MAX_DEPTH + 1)).contains("nesting"));
    // Far deeper input is refused without exhausting the stack.
    assert!(fails(&nested(100_000)).contains("nesting"));
    assert!(fails(&skipped(100_000)).contains("nesting"));
}

#[test]
fn only_the_keys_the_rules_read_are_kept() {
    let event = parse(
        r#"{"programId":"p","noise":{"deep":[1,2,{"x":"y"}]},"userProfile":{"framework":{"a":1},
            "userLocations":[{"type":"state","name":"KA","extra":[1]}]},"__v":0}"#,
    )
    .unwrap();
    let Value::Object(pairs) = &event else {
        panic!("not an object")
    };
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, ["programId", "userProfile"]);
    let profile = event.get("userProfile").unwrap();
    assert!(profile.get("framework").is_none());
    let Some(Value::Array(locations)) = profile.get("userLocations") else {
        panic!("locations not kept")
    };
    assert_eq!(
        locations[0].get("name"),
        Some(&Value::Str(Cow::Borrowed("KA")))
    );
    assert!(locations[0].get("extra").is_none());
}

#[test]
fn escaped_keys_match_their_decoded_name() {
    let event = parse(r#"{"program\u0049d":"p","user\u0049d":"u\"q"}"#).unwrap();
    assert_eq!(
        event.get("programId"),
        Some(&Value::Str(Cow::Borrowed("p")))
    );
    assert_eq!(
        event.get("userId"),
        Some(&Value::Str(Cow::Borrowed("u\"q")))
    );
}

#[test]
fn a_repeated_key_resolves_to_its_last_value() {
    let event =
        parse(r#"{"programId":"a","userId":"u","programId":"b","programId":null}"#).unwrap();
    assert_eq!(event.get("programId"), Some(&Value::Null));
    assert_eq!(event.distinct_keys(), 2);
    let inner = item(r#"[{"k":1,"k":2,"j":3}]"#);
    assert_eq!(inner.get("k"), Some(&Value::Num("2")));
    assert_eq!(inner.distinct_keys(), 2);
    assert_eq!(item("[[]]").get("k"), None);
    assert_eq!(item("[[]]").distinct_keys(), 0);
}
