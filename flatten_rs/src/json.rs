//! A strict RFC 8259 parser that keeps only the parts of an event the rules read.
//!
//! The whole message is validated (UTF-8, grammar, escapes, surrogate pairs, depth), but values
//! under keys nobody reads are skipped without being built. Strings without escapes borrow from
//! the input; numbers keep their text as written.

use std::borrow::Cow;

pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number's text exactly as written.
    Num(&'a str),
    Str(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Pairs in input order; a repeated key is resolved by [`Value::get`] (last one wins).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
    /// Validated but not kept (nobody reads it).
    Skipped,
}

impl<'a> Value<'a> {
    /// The value of the last occurrence of `key`, like a JSON object with last-wins keys.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Number of distinct keys (duplicates count once).
    pub fn distinct_keys(&self) -> usize {
        match self {
            Value::Object(pairs) => {
                let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
                for (k, _) in pairs {
                    if !seen.contains(&k.as_ref()) {
                        seen.push(k);
                    }
                }
                seen.len()
            }
            _ => 0,
        }
    }
}

/// Which parts of a value to keep.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Keep {
    All,
    /// The top-level event: only the keys of the contract.
    Event,
    /// `userProfile`: only the keys of the contract.
    Profile,
    Nothing,
}

fn keep_in_event(key: &str) -> Keep {
    match key {
        "userProfile" => Keep::Profile,
        "programId"
        | "userId"
        | "programExternalId"
        | "programName"
        | "requestForPIIConsent"
        | "createdAt"
        | "updatedAt"
        | "deleted" => Keep::All,
        _ => Keep::Nothing,
    }
}

fn keep_in_profile(key: &str) -> Keep {
    match key {
        "userLocations" | "rootOrg" | "profileUserTypes" | "organisations" => Keep::All,
        _ => Keep::Nothing,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub String);

type Result<T> = std::result::Result<T, Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// Parse a whole message (already known to be UTF-8) as one JSON value.
pub fn parse(text: &str) -> Result<Value<'_>> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    p.ws();
    let value = p.value(1, Keep::Event)?;
    p.ws();
    if p.pos != p.bytes.len() {
        return err(format!(
            "unexpected data after the JSON value at byte {}",
            p.pos
        ));
    }
    Ok(value)
}

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect_literal(&mut self, lit: &[u8]) -> Result<()> {
        if self.bytes[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            err(format!("invalid literal at byte {}", self.pos))
        }
    }

    /// `depth` is the nesting level of the value about to be read (the top level is 1).
    fn value(&mut self, depth: usize, keep: Keep) -> Result<Value<'a>> {
        match self.peek() {
            Some(b'{') => {
                if depth > MAX_DEPTH {
                    return err(format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                if keep == Keep::Nothing {
                    self.skip_container(depth)?;
                    return Ok(Value::Skipped);
                }
                self.object(depth, keep)
            }
            Some(b'[') => {
                if depth > MAX_DEPTH {
                    return err(format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                if keep == Keep::Nothing {
                    self.skip_container(depth)?;
                    return Ok(Value::Skipped);
                }
                self.array(depth)
            }
            Some(b'"') => {
                if keep == Keep::Nothing {
                    self.skip_string()?;
                    Ok(Value::Skipped)
                } else {
                    Ok(Value::Str(self.string()?))
                }
            }
            Some(b't') => self.expect_literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.expect_literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.expect_literal(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Num),
            Some(_) => err(format!("unexpected character at byte {}", self.pos)),
            None => err("unexpected end of input"),
        }
    }

    fn object(&mut self, depth: usize, keep: Keep) -> Result<Value<'a>> {
        self.pos += 1;
        let mut pairs = Vec::with_capacity(8);
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(pairs));
        }
        loop {
            if self.peek() != Some(b'"') {
                return err(format!("expected a key at byte {}", self.pos));
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return err(format!("expected ':' at byte {}", self.pos));
            }
            self.pos += 1;
            self.ws();
            let child = match keep {
                Keep::Event => keep_in_event(&key),
                Keep::Profile => keep_in_profile(&key),
                _ => Keep::All,
            };
            let value = self.value(depth + 1, child)?;
            if child != Keep::Nothing {
                pairs.push((key, value));
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(pairs));
                }
                _ => return err(format!("expected ',' or '}}' at byte {}", self.pos)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>> {
        self.pos += 1;
        let mut items = Vec::with_capacity(8);
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1, Keep::All)?);
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return err(format!("expected ',' or ']' at byte {}", self.pos)),
            }
        }
    }

    /// Validate a container we do not keep, without recursion: the grammar is checked with a
    /// stack of open containers (bounded by the depth limit).
    fn skip_container(&mut self, base_depth: usize) -> Result<()> {
        let mut stack: Vec<u8> = Vec::with_capacity(16);
        loop {
            // At a value position.
            self.ws();
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    if base_depth + stack.len() > MAX_DEPTH {
                        return err(format!("nesting deeper than {MAX_DEPTH} levels"));
                    }
                    self.pos += 1;
                    stack.push(open);
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        stack.pop();
                    } else if open == b'{' {
                        self.key_colon()?;
                        continue;
                    } else {
                        continue;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't') => self.expect_literal(b"true")?,
                Some(b'f') => self.expect_literal(b"false")?,
                Some(b'n') => self.expect_literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                Some(_) => return err(format!("unexpected character at byte {}", self.pos)),
                None => return err("unexpected end of input"),
            }
            // After a value: close containers or move to the next element.
            loop {
                let Some(&top) = stack.last() else {
                    return Ok(());
                };
                self.ws();
                match (top, self.peek()) {
                    (_, Some(b',')) => {
                        self.pos += 1;
                        if top == b'{' {
                            self.ws();
                            self.key_colon()?;
                        }
                        break;
                    }
                    (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ => return err(format!("unexpected character at byte {}", self.pos)),
                }
            }
        }
    }

    fn key_colon(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return err(format!("expected a key at byte {}", self.pos));
        }
        self.skip_string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return err(format!("expected ':' at byte {}", self.pos));
        }
        self.pos += 1;
        Ok(())
    }

    fn number(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let b = self.bytes;
        let mut i = self.pos;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => return err(format!("invalid number at byte {start}")),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return err(format!("invalid number at byte {start}"));
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return err(format!("invalid number at byte {start}"));
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        self.pos = i;
        Ok(&self.text[start..i])
    }

    /// Scan a string starting at its opening quote; returns (content end, has escapes) and
    /// leaves `pos` after the closing quote. Validates escapes and surrogate pairs.
    fn scan_string(&mut self) -> Result<(usize, bool)> {
        let b = self.bytes;
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            // Jump to the next quote or backslash (SIMD), then check the span for control
            // characters in one pass the compiler vectorises.
            let end = memchr::memchr2(b'"', b'\\', &b[i..]).map_or(b.len(), |off| i + off);
            if let Some(off) = b[i..end].iter().position(|&c| c < 0x20) {
                return err(format!("control character in a string at byte {}", i + off));
            }
            i = end;
            match b.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok((i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    i = self.escape(i)?;
                }
                Some(_) => return err(format!("control character in a string at byte {i}")),
                None => return err("unterminated string"),
            }
        }
    }

    /// Validate the escape at `i` (a backslash); returns the index after it.
    fn escape(&self, i: usize) -> Result<usize> {
        let b = self.bytes;
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let unit = hex4(b, i + 2).ok_or_else(|| Error(format!("bad \\u escape at {i}")))?;
                if (0xD800..0xDC00).contains(&unit) {
                    let low = if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                        hex4(b, i + 8)
                    } else {
                        None
                    };
                    match low {
                        Some(l) if (0xDC00..0xE000).contains(&l) => Ok(i + 12),
                        _ => err(format!("unpaired surrogate escape at byte {i}")),
                    }
                } else if (0xDC00..0xE000).contains(&unit) {
                    err(format!("unpaired surrogate escape at byte {i}"))
                } else {
                    Ok(i + 6)
                }
            }
            _ => err(format!("invalid escape at byte {i}")),
        }
    }

    fn skip_string(&mut self) -> Result<()> {
        self.scan_string().map(|_| ())
    }

    fn string(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos + 1;
        let (end, escaped) = self.scan_string()?;
        if !escaped {
            return Ok(Cow::Borrowed(&self.text[start..end]));
        }
        Ok(Cow::Owned(unescape(&self.text[start..end])))
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Decode the escapes of an already validated string body.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut plain = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&s[plain..i]);
        let c = match b[i + 1] {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                let unit = hex4(b, i + 2).unwrap_or(0xFFFD);
                if (0xD800..0xDC00).contains(&unit) {
                    let low = hex4(b, i + 8).unwrap_or(0xDC00);
                    i += 6;
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                        .unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(unit).unwrap_or('\u{FFFD}')
                }
            }
        };
        out.push(c);
        i += if b[i + 1] == b'u' { 6 } else { 2 };
        plain = i;
    }
    out.push_str(&s[plain..]);
    out
}
