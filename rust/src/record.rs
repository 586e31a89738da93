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

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    escaped: bool,
}

impl<'a> Cursor<'a> {
    fn literal(&mut self, text: &[u8]) -> Option<()> {
        if self.buf.get(self.at..self.at + text.len())? == text {
            self.at += text.len();
            Some(())
        } else {
            None
        }
    }

    /// A JSON string's contents (between the quotes, escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.literal(b"\"")?;
        let start = self.at;
        loop {
            let rest = self.buf.get(self.at..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            self.at += found;
            if self.buf[self.at] == b'"' {
                let text = &self.buf[start..self.at];
                self.at += 1;
                return Some(text);
            }
            self.escaped = true;
            self.at += 2; // the backslash and the character it escapes
        }
    }

    fn unsigned(&mut self) -> Option<u64> {
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&digit) = self.buf.get(self.at) {
            if !digit.is_ascii_digit() {
                break;
            }
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        (self.at > start).then_some(value)
    }
}

/// The leading fields of a fact record, or None if `body` is not one laid out as
/// KilnDB writes them (the caller then parses it as JSON).
pub fn fact_head(body: &[u8]) -> Option<FactHead<'_>> {
    let mut cursor = Cursor {
        buf: body,
        at: 0,
        escaped: false,
    };
    cursor.literal(FACT_PREFIX)?;
    let id = cursor.string()?;
    cursor.literal(b",\"store\":")?;
    let store = cursor.string()?;
    cursor.literal(b",\"key\":")?;
    let key = cursor.string()?;
    cursor.literal(b",\"seq\":")?;
    let seq = cursor.unsigned()?;
    cursor.literal(b",\"position\":")?;
    let position = cursor.unsigned()?;
    cursor.literal(b",")?;
    Some(FactHead {
        id,
        store,
        key,
        seq,
        position,
        escaped: cursor.escaped,
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
