//! `kiln check` of an intact data file, natively: the common case at the speed of the
//! disk, leaving every finding to the frame-by-frame checker in Python.
//!
//! Theory of operation
//! -------------------
//! [`check_file`] walks a data file after its header with the rules of recovery
//! ([`crate::index`]) made stricter, to the rules of `kilndb.storage.check`: every frame
//! intact, every record laid out as KilnDB writes it (every byte of it valid JSON), a
//! seq from 1 to 2^31 - 1, positions above every earlier one, each batch whole and its
//! facts numbered from the first position its header names, and nothing but zeros after
//! the end of the data. Such a file has nothing to report, and the walk's index is what
//! the checker needs of it. At the first thing these rules do not cover, whether damage
//! or only a record in a layout of its own, the walk gives up and returns None: the
//! Python checker then reads the file frame by frame, says what is wrong and where, and
//! repairs it. So this is only ever a faster way to the answer "nothing wrong", never a
//! second opinion on damage.
//!
//! [`hint_mismatch`] compares a hint file's columns with the facts of its data file,
//! entry by entry, as `kilndb.storage.check` does for a file it read itself.

use std::collections::HashMap;

use pyo3::prelude::*;

use crate::errors::guard;
use crate::frame::Stop;
use crate::index::{read_range, IndexState, Indexed, IndexedFile};
use crate::keydir::{le_u32, le_u64, HintColumns};
use crate::record::is_generated;

/// Bit 31 of a hint's seq column: the fact is a tombstone.
const TOMBSTONE: u32 = 1 << 31;

/// Index `[start, end)` of the data file open as `fd` (just after its header, whose
/// first position is above `after`) if it is intact by the rules of `kiln check`; None
/// if anything in it needs the frame-by-frame checker (see the module docs).
#[pyfunction]
pub fn check_file(
    py: Python<'_>,
    fd: i32,
    path: String,
    start: u64,
    end: u64,
    after: u64,
) -> PyResult<Option<IndexedFile>> {
    guard(py, || {
        let data = read_range(py, fd, &path, start, end)?;
        if data.len() as u64 != end.saturating_sub(start) {
            return Ok(None);
        }
        py.detach(|| Ok(intact(&data, start, end, after)))
    })
}

/// The walk of [`check_file`] over `data`, the bytes of `[start, end)`.
fn intact(data: &[u8], start: u64, end: u64, after: u64) -> Option<IndexedFile> {
    let mut state = IndexState::new(start, after, true);
    let mut p = 0usize;
    if state.run(data, &mut p, start, end).is_some() || state.failed_at.is_some() {
        return None; // a record in a layout of its own, or one the rules refuse
    }
    if state.expected > 0 {
        return None; // a batch the file ends inside
    }
    let data_end = match state.stop {
        Stop::Clean => end,
        Stop::EndMarker | Stop::Short => {
            let rest = &data[(state.stop_offset - start) as usize..];
            if rest.iter().any(|&b| b != 0) {
                return None;
            }
            state.stop_offset
        }
        Stop::Length | Stop::Crc => return None,
    };
    Some(IndexedFile {
        records: state.records,
        facts: state.facts,
        good_end: data_end,
        bad_offset: None,
        damage: data_end,
        stop_reason: state.stop.reason(),
    })
}

/// How `hint` disagrees with `facts` (those of its data file, in file order), or None;
/// `ids`: the hint's `{position: id}` of client-supplied ids. The messages are those of
/// `kilndb.storage.check`.
pub fn hint_mismatch(
    facts: &[Indexed],
    hint: &HintColumns<'_>,
    ids: &HashMap<u64, String>,
    id_prefix: Option<&str>,
) -> Option<String> {
    if let Some(error) = hint.length_error() {
        return Some(error);
    }
    let mut previous = 0u64;
    for (i, key) in hint.keys.iter().enumerate() {
        let position = le_u64(hint.positions, i);
        let offset = le_u64(hint.offsets, i);
        let Ok(at) = facts.binary_search_by_key(&offset, |f| f.offset) else {
            return Some(format!(
                "hint names a fact at offset {offset} where there is none"
            ));
        };
        let fact = &facts[at];
        let fields = &fact.fields;
        let tombstone = if fields.deleted { TOMBSTONE } else { 0 };
        let same = previous < position
            && position == fields.position
            && u64::from(le_u32(hint.sizes, i)) == fact.size
            && u64::from(le_u32(hint.seqs, i)) == (fields.seq | u64::from(tombstone))
            && f64::from_bits(le_u64(hint.ttimes, i)) == fields.ttime;
        if same {
            let store = le_u32(hint.store_index, i) as usize;
            let Some(store_name) = hint.store_names.get(store) else {
                return Some("hint names a store it does not list".to_owned());
            };
            let same_id = match ids.get(&position) {
                Some(id) => *id == fields.id,
                None => id_prefix.is_some_and(|prefix| is_generated(prefix, &fields.id, position)),
            };
            if *store_name == fields.store && *key == fields.key && same_id {
                previous = position;
                continue;
            }
        }
        return Some(format!(
            "hint entry for position {position} does not match the data file"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn fact(position: u64, seq: u64) -> Vec<u8> {
        let body = format!(
            r#"{{"id":"i{position}","store":"s","key":"k","seq":{seq},"position":{position},"value":1,"value_hash":"h","transaction_time":1.5,"valid_time":null,"causation":null,"schema_version":1,"producer":null,"derivation":null,"metadata":{{}},"deleted":false}}"#
        );
        frame::encode(body.as_bytes())
    }

    fn batch(count: u64, first: u64) -> Vec<u8> {
        frame::encode(format!(r#"{{"batch":{count},"first":{first}}}"#).as_bytes())
    }

    fn walk(parts: &[Vec<u8>], tail: &[u8]) -> Option<IndexedFile> {
        let mut data: Vec<u8> = parts.concat();
        data.extend_from_slice(tail);
        intact(&data, 0, data.len() as u64, 0)
    }

    #[test]
    fn an_intact_file_is_indexed_to_its_end_marker() {
        let parts = [fact(1, 1), batch(2, 2), fact(2, 2), fact(3, 3)];
        let found = walk(&parts, &[0; 64]).expect("intact");
        assert_eq!(found.facts.len(), 3);
        assert_eq!(found.records, 4);
        assert_eq!(found.good_end, parts.concat().len() as u64);
    }

    #[test]
    fn anything_irregular_is_left_to_the_checker() {
        // A seq out of range, a batch numbered from elsewhere or cut short, bytes after
        // the end marker, a torn frame, positions going back.
        assert!(walk(&[fact(1, 0)], b"").is_none());
        assert!(walk(&[fact(1, 1 << 31)], b"").is_none());
        assert!(walk(&[batch(2, 5), fact(1, 1), fact(2, 2)], b"").is_none());
        assert!(walk(&[batch(2, 1), fact(1, 1), fact(3, 2)], b"").is_none());
        assert!(walk(&[batch(3, 1), fact(1, 1), fact(2, 2)], b"").is_none());
        assert!(walk(&[fact(1, 1)], &[0, 0, 0, 0, 7]).is_none());
        let torn = fact(2, 1);
        assert!(walk(&[fact(1, 1), torn[..torn.len() - 3].to_vec()], b"").is_none());
        assert!(walk(&[fact(2, 1), fact(1, 1)], b"").is_none());
    }
}
