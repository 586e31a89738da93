//! Reading a batch of `kiln import` natively: JSON Lines of whole facts, as `kiln export`
//! writes them, made ready to stage without a Python object per line.
//!
//! Theory of operation
//! -------------------
//! The Python path reads each line with `orjson.loads`, checks its shape
//! (`kilndb.engine.imports.import_item`), builds a `kilndb.Write`, and the stager then
//! serialises the value back to canonical JSON and hashes it. [`read_import_lines`]
//! does the same for a whole batch in one pass that needs no Python object, with the
//! interpreter released: each line is parsed by [`json::parse`] (which accepts exactly
//! what `orjson.loads` accepts) into a small [`Tree`], checked field by field as the
//! Python path checks it, and turned into a [`Prepared`] write: its value written as
//! canonical JSON (members in key order, byte for byte what `kilndb.model.canonical_json`
//! writes for the value `orjson.loads` reads), its value hashed and the hash the line
//! claims compared, its producer, derivation and metadata written as orjson writes them
//! after a round trip through Python (members in their order).
//!
//! The fast path or step aside: a line is read here only when it is blank or an object
//! with exactly the fields of an exported fact (`kilndb.model.FACT_FIELDS`), each of a
//! form the Python path accepts (see [`LineReader::read_line`]). For anything else (a plain write,
//! an `expected_seq`, a bad field, a claimed value hash that is not the value's, a
//! repeated member name, nesting deep enough to approach orjson's limit, a transaction
//! time Python writes in exponent notation) the whole batch is refused with None, and the
//! Python path, which stays the reference, reads it with its precise line-numbered
//! errors. So a batch read here is one the Python path would have read the same way.
//!
//! [`crate::stage::Stager::stage_import`] stages the batch under the log's lock with
//! each fact's transaction time decided there (the rule of
//! `kilndb.storage.facts.FactLog.commit_imported`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::guard;
use crate::json::{self, Builder, Failed, Scratch};
use crate::jsonw;
use crate::stage::{
    char_len_at_most, plain_store_name, Json, Prepared, EMPTY_OBJECT, FACT_FIELDS, MAX_ID_CHARS,
    MAX_KEY_CHARS, NULL,
};

/// Containers nested deeper than this in a value, producer or derivation send the
/// batch to Python (orjson refuses to write more than 254).
const MAX_DEPTH: usize = 200;

/// Where a line's own transaction time goes when the database gives the fact another
/// (`kilndb.model.ORIGIN_TIME_KEY`).
const ORIGIN_TIME_KEY: &str = "kiln.origin_transaction_time";

/// The line is for the Python path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Aside;

/// A span of one of the tree's buffers.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// A JSON value of a line, as [`json::parse`] reads it: scalars inline, strings and
/// containers in the [`Tree`]'s buffers.
#[derive(Debug, Clone, Copy)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Its UTF-8 bytes in `Tree::text`.
    Str(Span),
    /// Its items in `Tree::items`.
    Array(Span),
    /// Its members in `Tree::members`, listed by `Tree::objects[n]`.
    Object(u32),
}

const NO_MEMBER: u32 = u32::MAX;

/// An object's members, in the order the line gives them.
struct Members {
    first: u32,
    last: u32,
}

struct Member {
    key: Span,
    value: Node,
    next: u32,
}

/// The values of one line, built by [`json::parse`]; its buffers are reused line after
/// line.
#[derive(Default)]
struct Tree {
    text: Vec<u8>,
    items: Vec<Node>,
    objects: Vec<Members>,
    members: Vec<Member>,
    /// The members of the objects being written, by depth (a scratch stack).
    order: Vec<u32>,
}

impl Tree {
    fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
        self.objects.clear();
        self.members.clear();
        self.order.clear();
    }

    fn text(&self, span: Span) -> &[u8] {
        &self.text[span.range()]
    }

    /// A string's text; Aside for a value that is not a string.
    fn str(&self, node: Node) -> Result<&str, Aside> {
        match node {
            // Valid UTF-8: the parser checks its input and unescapes to UTF-8.
            Node::Str(span) => std::str::from_utf8(self.text(span)).map_err(|_| Aside),
            _ => Err(Aside),
        }
    }

    fn push_text(&mut self, value: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(value.as_bytes());
        Span {
            start,
            len: value.len() as u32,
        }
    }

    /// The members of object `id`, pushed onto `order`; returns where they start.
    fn push_members(&mut self, id: u32) -> usize {
        let base = self.order.len();
        let mut at = self.objects[id as usize].first;
        while at != NO_MEMBER {
            self.order.push(at);
            at = self.members[at as usize].next;
        }
        base
    }

    /// Whether two members of `order[base..]` have the same name (orjson would keep the
    /// last value at the first one's place: left to Python). Sorts `order[base..]` by
    /// name with `sort`, leaves it as it is otherwise.
    fn has_repeated_name(&mut self, base: usize, sort: bool) -> bool {
        let count = self.order.len() - base;
        if count < 2 {
            return false;
        }
        let sorted_from = if sort {
            base
        } else {
            self.order.extend_from_within(base..);
            base + count
        };
        let (text, members) = (&self.text, &self.members);
        let name = |m: u32| &text[members[m as usize].key.range()];
        self.order[sorted_from..].sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        let repeated = self.order[sorted_from..]
            .windows(2)
            .any(|pair| name(pair[0]) == name(pair[1]));
        self.order.truncate(base + count);
        repeated
    }

    /// Write `node` as orjson writes the value `orjson.loads` makes of it: objects'
    /// members in key order (code point order) with `sort`, in their order otherwise.
    /// `depth`: the containers around it.
    fn write(
        &mut self,
        out: &mut Vec<u8>,
        node: Node,
        sort: bool,
        depth: usize,
    ) -> Result<(), Aside> {
        match node {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Bool(true) => out.extend_from_slice(b"true"),
            Node::Bool(false) => out.extend_from_slice(b"false"),
            Node::Int(n) => json::write_i64(out, n),
            Node::UInt(n) => json::write_u64(out, n),
            Node::Float(x) => json::write_f64(out, x),
            Node::Str(span) => json::write_str(out, &self.text[span.range()]),
            Node::Array(span) => {
                if depth >= MAX_DEPTH {
                    return Err(Aside);
                }
                out.push(b'[');
                for (n, at) in span.range().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    let item = self.items[at];
                    self.write(out, item, sort, depth + 1)?;
                }
                out.push(b']');
            }
            Node::Object(id) => {
                if depth >= MAX_DEPTH {
                    return Err(Aside);
                }
                let base = self.push_members(id);
                if self.has_repeated_name(base, sort) {
                    return Err(Aside);
                }
                out.push(b'{');
                for n in 0..self.order.len() - base {
                    let member = &self.members[self.order[base + n] as usize];
                    let (key, value) = (member.key, member.value);
                    if n > 0 {
                        out.push(b',');
                    }
                    json::write_str(out, &self.text[key.range()]);
                    out.push(b':');
                    self.write(out, value, sort, depth + 1)?;
                }
                out.push(b'}');
                self.order.truncate(base);
            }
        }
        Ok(())
    }
}

impl Builder for Tree {
    type Value = Node;

    fn null(&mut self) -> Result<Node, Failed> {
        Ok(Node::Null)
    }
    fn boolean(&mut self, value: bool) -> Result<Node, Failed> {
        Ok(Node::Bool(value))
    }
    fn int(&mut self, value: i64) -> Result<Node, Failed> {
        Ok(Node::Int(value))
    }
    fn uint(&mut self, value: u64) -> Result<Node, Failed> {
        Ok(Node::UInt(value))
    }
    fn float(&mut self, value: f64) -> Result<Node, Failed> {
        Ok(Node::Float(value))
    }
    fn string(&mut self, value: &str) -> Result<Node, Failed> {
        Ok(Node::Str(self.push_text(value)))
    }
    fn key(&mut self, value: &str) -> Result<Node, Failed> {
        Ok(Node::Str(self.push_text(value)))
    }
    fn array(&mut self, items: &mut Vec<Node>, start: usize) -> Result<Node, Failed> {
        let at = self.items.len() as u32;
        let len = (items.len() - start) as u32;
        self.items.extend(items.drain(start..));
        Ok(Node::Array(Span { start: at, len }))
    }
    fn object(&mut self) -> Result<Node, Failed> {
        self.objects.push(Members {
            first: NO_MEMBER,
            last: NO_MEMBER,
        });
        Ok(Node::Object(self.objects.len() as u32 - 1))
    }
    fn set(&mut self, object: &Node, key: Node, value: Node) -> Result<(), Failed> {
        let (Node::Object(id), Node::Str(key)) = (*object, key) else {
            return Err(Failed);
        };
        let at = self.members.len() as u32;
        self.members.push(Member {
            key,
            value,
            next: NO_MEMBER,
        });
        let list = &mut self.objects[id as usize];
        match list.last {
            NO_MEMBER => list.first = at,
            last => self.members[last as usize].next = at,
        }
        list.last = at;
        Ok(())
    }
}

/// A whole fact read from a line, ready to stage.
pub(crate) struct ImportedFact {
    pub(crate) write: Prepared,
    /// The transaction time the fact carries.
    pub(crate) own_time: f64,
    /// Whether its metadata has an origin time already (kept if the fact is given
    /// another time).
    pub(crate) has_origin: bool,
}

/// What reading lines keeps between them.
#[derive(Default)]
struct LineReader {
    tree: Tree,
    scratch: Scratch<Node>,
    out: Vec<u8>,
}

/// Python's `bytes.strip()` whitespace: a line of nothing else is blank.
fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
}

/// The index of a fact's field in `FACT_FIELDS`.
fn field_index(name: &[u8]) -> Option<usize> {
    FACT_FIELDS
        .iter()
        .position(|field| field.as_bytes() == name)
}

impl LineReader {
    /// Read one line as the Python path would: `Ok(None)` for a blank line, the fact of
    /// a line that is a whole fact as exported, Aside for anything else.
    ///
    /// Accepted, as `import_item` and the stager accept them: an object whose member
    /// names are exactly `FACT_FIELDS`, each once; `id` and `causation` null or a
    /// string of 1 to 256 characters; `store` a name a user may write to; `key` a
    /// string of 1 to 1024 characters; `seq` and `position` anything (they are the
    /// database's to assign); `value` any JSON; `value_hash` null or the value's hash
    /// (null's for a tombstone); `transaction_time` a number whose `repr` is plain
    /// (zero, or 1e-4 up to 1e16 in magnitude); `valid_time` null or a number;
    /// `schema_version` null (1) or an integer from 1; `producer` and `derivation` any
    /// JSON; `metadata` null or an object of strings; `deleted` a boolean.
    fn read_line(&mut self, line: &[u8]) -> Result<Option<ImportedFact>, Aside> {
        if is_blank(line) {
            return Ok(None);
        }
        if line.len() >= u32::MAX as usize {
            return Err(Aside);
        }
        let tree = &mut self.tree;
        tree.clear();
        let Ok(Node::Object(top)) = json::parse(line, tree, &mut self.scratch) else {
            return Err(Aside);
        };
        let mut fields: [Option<Node>; FACT_FIELDS.len()] = [None; FACT_FIELDS.len()];
        let mut at = tree.objects[top as usize].first;
        while at != NO_MEMBER {
            let member = &tree.members[at as usize];
            let index = field_index(tree.text(member.key)).ok_or(Aside)?;
            if fields[index].replace(member.value).is_some() {
                return Err(Aside);
            }
            at = member.next;
        }
        let [Some(id), Some(store), Some(key), Some(_seq), Some(_position), Some(value), Some(claimed), Some(own_time), Some(valid_time), Some(causation), Some(schema_version), Some(producer), Some(derivation), Some(metadata), Some(deleted)] =
            fields
        else {
            return Err(Aside); // a field is missing
        };

        let optional_text = |node: Node| -> Result<Option<&str>, Aside> {
            match node {
                Node::Null => Ok(None),
                _ => {
                    let text = tree.str(node)?;
                    if text.is_empty() || !char_len_at_most(text, MAX_ID_CHARS) {
                        return Err(Aside);
                    }
                    Ok(Some(text))
                }
            }
        };
        let id_text = optional_text(id)?.map(str::to_owned);
        let causation_json: Json = match optional_text(causation)? {
            Some(text) => jsonw::string_json(text).into(),
            None => NULL,
        };
        let store_text = tree.str(store)?;
        if !plain_store_name(store_text, false) {
            return Err(Aside);
        }
        let store_text = store_text.to_owned();
        let key_text = tree.str(key)?;
        if key_text.is_empty() || !char_len_at_most(key_text, MAX_KEY_CHARS) {
            return Err(Aside);
        }
        let key_text = key_text.to_owned();
        let Node::Bool(deleted) = deleted else {
            return Err(Aside);
        };
        let own_time = number(own_time).ok_or(Aside)?;
        if !(own_time == 0.0 || (1e-4..1e16).contains(&own_time.abs())) {
            return Err(Aside);
        }
        let valid_time = match valid_time {
            Node::Null => None,
            node => Some(number(node).ok_or(Aside)?),
        };
        let schema_version = match schema_version {
            Node::Null => 1,
            Node::Int(n) if n >= 1 => n,
            _ => return Err(Aside),
        };
        let (has_origin, metadata_json) = self.metadata(metadata)?;
        let tree = &mut self.tree;
        let out = &mut self.out;
        let mut any_json = |node: Node| -> Result<Json, Aside> {
            if let Node::Null = node {
                return Ok(NULL);
            }
            out.clear();
            tree.write(out, node, false, 0)?;
            Ok(out.to_vec().into())
        };
        let producer_json = any_json(producer)?;
        let derivation_json = any_json(derivation)?;
        let value_json = if deleted {
            b"null".to_vec()
        } else {
            out.clear();
            tree.write(out, value, true, 0)?;
            out.to_vec()
        };
        let value_hash = jsonw::sha256_hex(&value_json);
        match claimed {
            Node::Null => {}
            Node::Str(span) if tree.text(span) == value_hash.as_bytes() => {}
            _ => return Err(Aside),
        }
        Ok(Some(ImportedFact {
            write: Prepared {
                store_text,
                key_text,
                value_json,
                value_hash,
                expected_seq: None,
                id_text,
                causation_json,
                valid_time,
                schema_version,
                producer_json,
                derivation_json,
                metadata_json,
                deleted,
                objects: None,
            },
            own_time,
            has_origin,
        }))
    }

    /// The JSON of a line's metadata (null or an object of strings), and whether it has
    /// an origin time.
    fn metadata(&mut self, node: Node) -> Result<(bool, Json), Aside> {
        let tree = &mut self.tree;
        let id = match node {
            Node::Null => return Ok((false, EMPTY_OBJECT)),
            Node::Object(id) => id,
            _ => return Err(Aside),
        };
        let base = tree.push_members(id);
        if base == tree.order.len() {
            return Ok((false, EMPTY_OBJECT));
        }
        let mut has_origin = false;
        for &at in &tree.order[base..] {
            let member = &tree.members[at as usize];
            if !matches!(member.value, Node::Str(_)) {
                return Err(Aside);
            }
            has_origin |= tree.text(member.key) == ORIGIN_TIME_KEY.as_bytes();
        }
        tree.order.truncate(base);
        self.out.clear();
        tree.write(&mut self.out, node, false, 0)?;
        Ok((has_origin, self.out.to_vec().into()))
    }
}

/// A number as Python's `float()` makes it (an int correctly rounded); None if `node`
/// is not a number.
fn number(node: Node) -> Option<f64> {
    match node {
        Node::Float(x) => Some(x),
        Node::Int(n) => Some(n as f64),
        Node::UInt(n) => Some(n as f64),
        _ => None,
    }
}

/// `metadata` (a fact's metadata JSON, `{}` or members in order) with
/// `"kiln.origin_transaction_time": repr(own_time)` added last, as
/// `dict.setdefault` adds it; `own_time` is one [`LineReader::read_line`] accepted,
/// whose `repr` is the shortest round-trip digits in plain notation.
pub(crate) fn with_origin_time(metadata: &[u8], own_time: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(metadata.len() + ORIGIN_TIME_KEY.len() + 32);
    match metadata {
        b"{}" => out.push(b'{'),
        _ => {
            out.extend_from_slice(&metadata[..metadata.len() - 1]);
            out.push(b',');
        }
    }
    jsonw::write_str(&mut out, ORIGIN_TIME_KEY);
    out.extend_from_slice(b":\"");
    json::write_f64(&mut out, own_time);
    out.extend_from_slice(b"\"}");
    out
}

/// A batch of an import read natively: one fact per line that is not blank.
#[pyclass(module = "kilndb._core")]
pub struct ImportLines {
    /// Taken when the batch is staged.
    pub(crate) facts: Vec<ImportedFact>,
    count: usize,
    idless: usize,
}

#[pymethods]
impl ImportLines {
    /// Facts read (lines that are not blank).
    #[getter]
    fn count(&self) -> usize {
        self.count
    }

    /// Facts without an id.
    #[getter]
    fn idless(&self) -> usize {
        self.idless
    }
}

/// Read `lines` (bytes, one JSON Lines line each) as whole facts as exported, with the
/// interpreter released; None if any line needs the Python path (see the module docs).
#[pyfunction]
pub fn read_import_lines(
    py: Python<'_>,
    lines: Vec<Bound<'_, PyBytes>>,
) -> PyResult<Option<ImportLines>> {
    guard(py, || {
        let texts: Vec<&[u8]> = lines.iter().map(|line| line.as_bytes()).collect();
        Ok(py.detach(|| read_all(&texts)))
    })
}

fn read_all(lines: &[&[u8]]) -> Option<ImportLines> {
    let mut reader = LineReader::default();
    let mut facts = Vec::with_capacity(lines.len());
    for line in lines {
        if let Some(fact) = reader.read_line(line).ok()? {
            facts.push(fact);
        }
    }
    let idless = facts.iter().filter(|f| f.write.id_text.is_none()).count();
    Some(ImportLines {
        count: facts.len(),
        facts,
        idless,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_OF_NULL: &str = "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b";

    fn line(fields: &[(&str, &str)]) -> String {
        let defaults = [
            ("id", r#""i-1""#),
            ("store", r#""s""#),
            ("key", r#""k""#),
            ("seq", "1"),
            ("position", "1"),
            ("value", "null"),
            ("value_hash", "null"),
            ("transaction_time", "1700000000.5"),
            ("valid_time", "null"),
            ("causation", "null"),
            ("schema_version", "1"),
            ("producer", "null"),
            ("derivation", "null"),
            ("metadata", "{}"),
            ("deleted", "false"),
        ];
        let members: Vec<String> = defaults
            .iter()
            .map(|(name, default)| {
                let given = fields.iter().find(|(n, _)| n == name);
                format!("\"{name}\":{}", given.map_or(*default, |(_, v)| *v))
            })
            .collect();
        format!("{{{}}}\n", members.join(","))
    }

    fn read(text: &str) -> Result<Option<ImportedFact>, Aside> {
        LineReader::default().read_line(text.as_bytes())
    }

    fn fact(fields: &[(&str, &str)]) -> ImportedFact {
        read(&line(fields)).expect("read").expect("a fact")
    }

    fn value_json(value: &str) -> String {
        String::from_utf8(fact(&[("value", value)]).write.value_json).unwrap()
    }

    #[test]
    fn values_are_written_as_canonical_json() {
        for (given, canonical) in [
            (
                r#"{"b":1,"a":[true,null,{"z":0,"y":-0}]}"#,
                r#"{"a":[true,null,{"y":0,"z":0}],"b":1}"#,
            ),
            (
                r#" { "é" : 1 , "e" : 2 , "f\u0000" : 3 , "f" : 4 } "#,
                r#"{"e":2,"f":4,"f\u0000":3,"é":1}"#,
            ),
            (
                r#""\u00e9\/\ud83d\ude00\t\u001f\"""#,
                "\"é/😀\\t\\u001f\\\"\"",
            ),
            (
                "[1E2,1.50,-0.0,1e-7,1e16,123456789.125]",
                "[100.0,1.5,-0.0,1e-7,1e+16,123456789.125]",
            ),
            (
                "[18446744073709551615,-9223372036854775808,18446744073709551616]",
                "[18446744073709551615,-9223372036854775808,1.8446744073709552e+19]",
            ),
            ("[[],{},[[]]]", "[[],{},[[]]]"),
            (r#""\u2028 \u007f""#, "\"\u{2028} \u{7f}\""),
        ] {
            assert_eq!(value_json(given), canonical, "{given}");
        }
    }

    #[test]
    fn producer_derivation_and_metadata_keep_their_order() {
        let read = fact(&[
            ("producer", r#"{"b":1,"a":{"d":1,"c":2}}"#),
            ("derivation", r#"["x", 1.0]"#),
            ("metadata", r#"{"z":"1","a":"\u0041"}"#),
        ])
        .write;
        assert_eq!(&*read.producer_json, br#"{"b":1,"a":{"d":1,"c":2}}"#);
        assert_eq!(&*read.derivation_json, br#"["x",1.0]"#);
        assert_eq!(&*read.metadata_json, br#"{"z":"1","a":"A"}"#);
        let plain = fact(&[("metadata", "null")]).write;
        assert_eq!(&*plain.metadata_json, b"{}");
    }

    #[test]
    fn the_value_hash_is_checked_and_a_tombstone_hashes_null() {
        let read = fact(&[("value", "[1]")]);
        let hash = read.write.value_hash.clone();
        let claimed = format!("\"{hash}\"");
        assert!(read_line_ok(&line(&[
            ("value", "[1]"),
            ("value_hash", &claimed)
        ])));
        assert!(!read_line_ok(&line(&[
            ("value", "[2]"),
            ("value_hash", &claimed)
        ])));
        let tombstone = fact(&[("value", "[1]"), ("deleted", "true")]).write;
        assert_eq!(tombstone.value_json, b"null");
        assert_eq!(tombstone.value_hash, HASH_OF_NULL);
    }

    fn read_line_ok(text: &str) -> bool {
        matches!(read(text), Ok(Some(_)))
    }

    #[test]
    fn fields_are_read_as_the_python_path_reads_them() {
        let read = fact(&[
            ("id", "null"),
            ("causation", r#""c\n""#),
            ("valid_time", "3"),
            ("transaction_time", "1700000000"),
            ("schema_version", "null"),
            ("seq", r#"{"anything": [1]}"#),
        ]);
        let w = read.write;
        assert_eq!(w.id_text, None);
        assert_eq!(&*w.causation_json, br#""c\n""#);
        assert_eq!(w.valid_time, Some(3.0));
        assert_eq!(w.schema_version, 1);
        assert_eq!(read.own_time, 1.7e9);
        assert!(!read.has_origin);
        let kept = fact(&[("metadata", r#"{"kiln.origin_transaction_time":"5.0"}"#)]);
        assert!(kept.has_origin);
        assert_eq!(read_all(&[b" \t\r\n", b"\n"]).map(|b| b.count), Some(0));
    }

    #[test]
    fn anything_else_is_left_to_python() {
        let long = format!("\"{}\"", "x".repeat(257));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        for fields in [
            vec![("id", "\"\"")],
            vec![("id", long.as_str())],
            vec![("id", "7")],
            vec![("store", r#""kiln.leases""#)],
            vec![("store", r#""a b""#)],
            vec![("key", "\"\"")],
            vec![("key", "1")],
            vec![("deleted", "0")],
            vec![("transaction_time", "null")],
            vec![("transaction_time", "true")],
            vec![("transaction_time", "1e16")],
            vec![("transaction_time", "0.00001")],
            vec![("valid_time", "false")],
            vec![("schema_version", "0")],
            vec![("schema_version", "1.0")],
            vec![("metadata", r#"{"a":1}"#)],
            vec![("metadata", "[]")],
            vec![("metadata", r#"{"a":"1","a":"2"}"#)],
            vec![("value", r#"{"a":1,"a":2}"#)],
            vec![("producer", r#"{"a":1,"a":2}"#)],
            vec![("value", deep.as_str())],
            vec![("value_hash", "1")],
        ] {
            assert_eq!(read(&line(&fields)).err(), Some(Aside), "{fields:?}");
        }
        let whole = line(&[]);
        for other in [
            whole.replacen("\"deleted\"", "\"expected_seq\":null,\"deleted\"", 1),
            whole.replacen(",\"deleted\":false", "", 1),
            whole.replacen("\"id\"", "\"id\":null,\"id\"", 1),
            "[1]".to_owned(),
            "{\"store\":\"s\",\"key\":\"k\",\"value\":1}".to_owned(),
            whole.replacen('}', "", 1),
        ] {
            assert_eq!(read(&other).err(), Some(Aside), "{other}");
        }
    }

    #[test]
    fn an_origin_time_goes_last_in_the_metadata() {
        assert_eq!(
            with_origin_time(b"{}", 1700000000.25),
            br#"{"kiln.origin_transaction_time":"1700000000.25"}"#
        );
        assert_eq!(
            with_origin_time(br#"{"a":"b"}"#, 100.0),
            br#"{"a":"b","kiln.origin_transaction_time":"100.0"}"#
        );
    }
}
