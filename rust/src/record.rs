//! Records: the bodies of the frames in a data file.
//!
//! Every body is a JSON object of one of three kinds, told apart by its first key:
//!
//! ```text
//! {"file": N, "first_position": P, "database_id": "…"}   file header, first frame of a file
//! {"batch": n, "first": P}                               the next n frames are one atomic batch
//! {"id": …, "store": …, "key": …, "seq": …, "position": …, "value": …, "value_hash": …,
//!  "transaction_time": …, "valid_time": …, "causation": …, "schema_version": …,
//!  "producer": …, "derivation": …, "metadata": {…}, "deleted": …}      a fact
//! ```
//!
//! A fact record's fields are always written in that order (`kilndb.model.FACT_FIELDS`),
//! with no spaces, so the fields a scan filters on (store, key, seq, position) are read
//! straight from the bytes by [`fact_head`] without parsing the value.

pub const FACT_PREFIX: &[u8] = b"{\"id\":";
pub const BATCH_PREFIX: &[u8] = b"{\"batch\":";
pub const FILE_PREFIX: &[u8] = b"{\"file\":";

/// The leading fields of a fact record, borrowed from its body. Strings are the raw
/// JSON (escapes not decoded); `escaped` says whether any of them holds a backslash.
#[derive(Debug, PartialEq, Eq)]
pub struct FactHead<'a> {
    pub id: &'a [u8],
    pub store: &'a [u8],
    pub key: &'a [u8],
    pub seq: u64,
    pub position: u64,
    pub escaped: bool,
}

const MAX_DEPTH: usize = 1024;

/// A walk over a record's JSON, checking every byte it passes.
pub(crate) struct Walk<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Walk<'a> {
    pub(crate) fn literal(&mut self, text: &[u8]) -> Option<()> {
        if self.buf.get(self.at..self.at + text.len())? == text {
            self.at += text.len();
            Some(())
        } else {
            None
        }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.at).copied()
    }

    /// A JSON string, decoded.
    /// A JSON string's contents as they are (between the quotes, escapes not decoded),
    /// and whether it holds an escape.
    pub(crate) fn raw_string(&mut self) -> Option<(&'a [u8], bool)> {
        self.literal(b"\"")?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = self.buf.get(self.at..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            self.at += found;
            if self.buf[self.at] == b'"' {
                let text = &self.buf[start..self.at];
                self.at += 1;
                return Some((text, escaped));
            }
            escaped = true;
            self.at += 2; // the backslash and the character it escapes
        }
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        self.literal(b"\"")?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let rest = self.buf.get(self.at..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            let chunk = &rest[..found];
            if chunk.iter().any(|&b| b < 0x20) {
                return None;
            }
            out.extend_from_slice(chunk);
            self.at += found;
            if self.buf[self.at] == b'"' {
                self.at += 1;
                return String::from_utf8(out).ok();
            }
            self.at += 1;
            let escape = self.peek()?;
            self.at += 1;
            match escape {
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                b'/' => out.push(b'/'),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let mut code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        self.literal(b"\\u")?;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return None;
                        }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    } else if (0xDC00..0xE000).contains(&code) {
                        return None;
                    }
                    let ch = char::from_u32(code)?;
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                }
                _ => return None,
            }
        }
    }

    /// Skip a JSON string, checking it exactly as [`Walk::string`] does (control
    /// characters, escapes, surrogate pairs, UTF-8) without decoding it.
    pub(crate) fn skip_string(&mut self) -> Option<()> {
        self.literal(b"\"")?;
        let start = self.at;
        loop {
            let rest = self.buf.get(self.at..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..found].iter().any(|&b| b < 0x20) {
                return None;
            }
            self.at += found;
            if self.buf[self.at] == b'"' {
                // Escapes are ASCII, so the raw text is UTF-8 exactly when the decoded
                // string is: a multi-byte character never holds a backslash.
                std::str::from_utf8(&self.buf[start..self.at]).ok()?;
                self.at += 1;
                return Some(());
            }
            self.at += 1;
            let escape = self.peek()?;
            self.at += 1;
            match escape {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        self.literal(b"\\u")?;
                        if !(0xDC00..0xE000).contains(&self.hex4()?) {
                            return None;
                        }
                    } else if (0xDC00..0xE000).contains(&code) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.buf.get(self.at..self.at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let code = u32::from_str_radix(text, 16).ok()?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.at += 4;
        Some(code)
    }

    /// A JSON number's text.
    pub(crate) fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let before = self.at;
            self.digits();
            if self.at == before {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e') | Some(b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+') | Some(b'-')) {
                self.at += 1;
            }
            let before = self.at;
            self.digits();
            if self.at == before {
                return None;
            }
        }
        std::str::from_utf8(&self.buf[start..self.at]).ok()
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Skip one JSON value, checking it.
    pub(crate) fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.whitespace();
        match self.peek()? {
            b'"' => self.skip_string()?,
            b'{' => {
                self.at += 1;
                self.whitespace();
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.whitespace();
                    self.skip_string()?;
                    self.whitespace();
                    self.literal(b":")?;
                    self.value(depth + 1)?;
                    self.whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.at += 1;
                self.whitespace();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    self.whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Some(())
    }

    pub(crate) fn unsigned(&mut self) -> Option<u64> {
        let text = self.number()?;
        text.parse::<u64>().ok()
    }
}

/// The leading fields of a fact record, or None if `body` is not one laid out as
/// KilnDB writes them (the caller then parses it as JSON).
pub fn fact_head(body: &[u8]) -> Option<FactHead<'_>> {
    let mut w = Walk { buf: body, at: 0 };
    w.literal(FACT_PREFIX)?;
    let (id, id_escaped) = w.raw_string()?;
    w.literal(b",\"store\":")?;
    let (store, store_escaped) = w.raw_string()?;
    w.literal(b",\"key\":")?;
    let (key, key_escaped) = w.raw_string()?;
    w.literal(b",\"seq\":")?;
    let seq = w.unsigned()?;
    w.literal(b",\"position\":")?;
    let position = w.unsigned()?;
    w.literal(b",")?;
    Some(FactHead {
        id,
        store,
        key,
        seq,
        position,
        escaped: id_escaped || store_escaped || key_escaped,
    })
}

/// The id a database gives the fact at `position` when the writer gave none (see
/// `kilndb.storage.ids`): the database's `prefix`, then `8000 | position >> 48` and the
/// low 48 bits of the position, in hex.
pub fn generated_id(prefix: &str, position: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let low = (1u64 << 63) | position;
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    for shift in (48..64).step_by(4).rev() {
        id.push(HEX[((low >> shift) & 15) as usize] as char);
    }
    id.push('-');
    for shift in (0..48).step_by(4).rev() {
        id.push(HEX[((low >> shift) & 15) as usize] as char);
    }
    id
}

/// Whether `id` is the one the database generated for the fact at `position`.
pub fn is_generated(prefix: &str, id: &str, position: u64) -> bool {
    id.len() == prefix.len() + 17 && id == generated_id(prefix, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_head_of_a_fact() {
        let body = br#"{"id":"a","store":"tasks","key":"t\"1","seq":3,"position":12,"value":1}"#;
        let head = fact_head(body).expect("a fact");
        assert_eq!(head.id, b"a");
        assert_eq!(head.store, b"tasks");
        assert_eq!(head.key, br#"t\"1"#);
        assert_eq!((head.seq, head.position, head.escaped), (3, 12, true));
    }

    #[test]
    fn generated_ids_match_the_python_codec() {
        // kilndb.storage.ids.IdCodec("0f1e2d3c-4b5a-4978-8877-665544332211").generate(5)
        let prefix = "0f1e2d3c-4b5a-8000-";
        assert_eq!(
            generated_id(prefix, 5),
            "0f1e2d3c-4b5a-8000-8000-000000000005"
        );
        assert!(is_generated(
            prefix,
            "0f1e2d3c-4b5a-8000-8000-000000000005",
            5
        ));
        assert!(!is_generated(
            prefix,
            "0f1e2d3c-4b5a-8000-8000-000000000005",
            6
        ));
    }

    #[test]
    fn skipping_a_string_checks_what_decoding_it_checks() {
        let cases: [&[u8]; 14] = [
            br#""plain""#,
            br#""esc\"\\\/\b\f\n\r\t""#,
            "\"caf\u{e9} \u{1F600}\"".as_bytes(),
            br#""\u00e9\ud83d\ude00""#,
            br#""\ud800""#,
            br#""\udc00x""#,
            br#""\ud800\u0041""#,
            br#""\x""#,
            br#""\u12g4""#,
            b"\"tab\there\"",
            b"\"\xc3\"",
            b"\"\xc3\\n\xa9\"",
            br#""unterminated"#,
            br#""""#,
        ];
        for case in cases {
            let decoded = Walk { buf: case, at: 0 }.string().is_some();
            let mut walk = Walk { buf: case, at: 0 };
            let skipped = walk.skip_string().is_some();
            assert_eq!(skipped, decoded, "{}", String::from_utf8_lossy(case));
            if skipped {
                assert_eq!(walk.at, case.len());
            }
        }
    }

    #[test]
    fn refuses_anything_else() {
        assert!(fact_head(br#"{"batch":2,"first":5}"#).is_none());
        assert!(fact_head(br#"{"id":"a","key":"k","store":"s","seq":1,"position":1,"#).is_none());
        assert!(fact_head(br#"{"id":"a","store":"s","key":"k","seq":-1,"position":1,"#).is_none());
        assert!(fact_head(
            br#"{"id":"a","store":"s","key":"k","seq":1,"position":99999999999999999999,"#
        )
        .is_none());
        assert!(fact_head(br#"{"id":"a\"#).is_none());
        assert!(fact_head(b"").is_none());
    }
}
