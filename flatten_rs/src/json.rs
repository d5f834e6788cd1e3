//! A strict RFC 8259 parser that keeps only the parts of an event the rules read.
//!
//! The whole message is validated (UTF-8, grammar, escapes, surrogate pairs, depth), but values
//! under keys nobody reads are skipped without being built. Strings without escapes borrow from
//! the input; numbers keep their text as written.

use std::borrow::Cow;

pub const MAX_DEPTH: usize = 100;

// A tagged-union layout keeps the payload 8-byte aligned: the default niche-packed layout put
// it at odd offsets, and copying results made the CPU stall on store forwarding.
#[derive(Debug, Clone, PartialEq)]
#[repr(u8)]
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

/// Which parts of a value to keep: the rules read a handful of keys, so objects on the path to
/// them keep only those keys, and everything else is validated without being built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Keep {
    All,
    Nothing,
    /// The top-level event.
    Event,
    /// `userProfile`.
    Profile,
    /// `userLocations` and one of its items.
    Locations,
    Location,
    /// `profileUserTypes` and one of its items.
    UserTypes,
    UserType,
    /// `organisations` and one of its items.
    Orgs,
    Org,
    /// `rootOrg`.
    RootOrg,
}

impl Keep {
    /// What to keep of the value under `key` in an object kept as `self`.
    fn child(self, key: &str) -> Keep {
        let wanted = |keys: &[&str]| {
            if keys.contains(&key) {
                Keep::All
            } else {
                Keep::Nothing
            }
        };
        match self {
            Keep::Event => match key {
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
            },
            Keep::Profile => match key {
                "userLocations" => Keep::Locations,
                "profileUserTypes" => Keep::UserTypes,
                "organisations" => Keep::Orgs,
                "rootOrg" => Keep::RootOrg,
                _ => Keep::Nothing,
            },
            Keep::Location => wanted(&["type", "name", "id", "code"]),
            Keep::UserType => wanted(&["type", "subType"]),
            Keep::Org => wanted(&["organisationId", "orgName", "isSchool"]),
            Keep::RootOrg => wanted(&["id", "orgName"]),
            // A list where an object was expected is rejected by type; keep it whole.
            _ => Keep::All,
        }
    }

    /// What to keep of each item of an array kept as `self`.
    fn item(self) -> Keep {
        match self {
            Keep::Locations => Keep::Location,
            Keep::UserTypes => Keep::UserType,
            Keep::Orgs => Keep::Org,
            _ => Keep::All,
        }
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
                self.array(depth, keep.item())
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

    /// Validate a value nobody reads.
    fn skip_value(&mut self, depth: usize) -> Result<()> {
        match self.peek() {
            Some(b'{' | b'[') => {
                if depth > MAX_DEPTH {
                    return err(format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.skip_container(depth)
            }
            Some(b'"') => self.skip_string(),
            Some(b't') => self.expect_literal(b"true"),
            Some(b'f') => self.expect_literal(b"false"),
            Some(b'n') => self.expect_literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
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
            // Keys are matched as borrowed text; only kept keys become owned pairs.
            let start = self.pos + 1;
            let (end, escaped) = self.scan_string()?;
            let raw = &self.text[start..end];
            let decoded = escaped.then(|| unescape(raw));
            let key = decoded.as_deref().unwrap_or(raw);
            self.ws();
            if self.peek() != Some(b':') {
                return err(format!("expected ':' at byte {}", self.pos));
            }
            self.pos += 1;
            self.ws();
            let child = keep.child(key);
            if child == Keep::Nothing {
                self.skip_value(depth + 1)?;
            } else {
                let value = self.value(depth + 1, child)?;
                let key = match decoded {
                    Some(owned) => Cow::Owned(owned),
                    None => Cow::Borrowed(raw),
                };
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

    fn array(&mut self, depth: usize, item: Keep) -> Result<Value<'a>> {
        self.pos += 1;
        let mut items = Vec::with_capacity(8);
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1, item)?);
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
        let mut stack = Open::default();
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
            i = special_byte(b, i);
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

/// The kinds of the open containers while skipping, one bit each (the depth limit keeps it
/// under 128): no allocation for the many small values an event carries and nobody reads.
#[derive(Default)]
struct Open {
    objects: u128,
    len: usize,
}

impl Open {
    fn len(&self) -> usize {
        self.len
    }
    fn push(&mut self, open: u8) {
        debug_assert!(self.len < 128);
        self.objects = (self.objects << 1) | u128::from(open == b'{');
        self.len += 1;
    }
    fn pop(&mut self) {
        self.objects >>= 1;
        self.len -= 1;
    }
    /// The bracket of the innermost open container.
    fn last(&self) -> Option<&u8> {
        match self.len {
            0 => None,
            _ if self.objects & 1 == 1 => Some(&b'{'),
            _ => Some(&b'['),
        }
    }
}

/// Index of the first `"`, `\\` or control character at or after `i` (or `b.len()`).
///
/// Event strings are short (ids, names, codes), so eight bytes at a time in a register beats
/// a SIMD search whose set-up costs more than the scan itself.
#[inline]
fn special_byte(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // A byte is flagged when it is below 0x20, or equal to '"' or '\\' (a zero after XOR).
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let hits =
            (x.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | slash.wrapping_sub(ONES))
                & !x
                & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
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

#[cfg(test)]
mod tests;
