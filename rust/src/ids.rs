//! The id index: the position of every fact whose id the client chose.
//!
//! Generated ids encode their position and need no index; a client-supplied id (an
//! idempotency key) is looked up here before a write, so that a retry returns the stored
//! fact. The ids' bytes live in one arena, each entry is 16 bytes (its position and
//! where its id begins: it ends where the next one begins) and a `HashTable<u32>` of
//! entry indexes finds them: about 48 bytes per id of 26 characters, plus the vectors'
//! room to grow, where a `dict[str, int]` takes about 140.
//!
//! Entries are never removed: an id whose fact retention dropped still names that
//! position, and the caller checks the keydir (a dropped fact's id is free again, and
//! writing it anew repoints the entry).

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{guard, invalid_argument};

#[derive(Clone, Copy)]
struct Entry {
    position: u64,
    offset: u64,
}

/// Client-supplied fact id → position.
#[derive(Default)]
pub struct Ids {
    hasher: DefaultHashBuilder,
    arena: Vec<u8>,
    /// `(position, offset in the arena)`; an id ends where the next one begins.
    entries: Vec<Entry>,
    table: HashTable<u32>,
}

impl Ids {
    fn bytes(&self, index: usize) -> &[u8] {
        let start = self.entries[index].offset as usize;
        let end = self
            .entries
            .get(index + 1)
            .map_or(self.arena.len(), |next| next.offset as usize);
        &self.arena[start..end]
    }

    fn find(&self, id: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&index| self.bytes(index as usize) == id)
            .map(|&index| index as usize)
    }

    /// The position of the fact stored under `id`.
    pub fn get(&self, id: &str) -> Option<u64> {
        self.find(id.as_bytes())
            .map(|index| self.entries[index].position)
    }

    /// Index `id` at `position` (repointing it if it is known).
    pub fn insert(&mut self, id: &str, position: u64) {
        let id = id.as_bytes();
        if let Some(index) = self.find(id) {
            self.entries[index].position = position;
            return;
        }
        let index = self.entries.len() as u32;
        self.entries.push(Entry {
            position,
            offset: self.arena.len() as u64,
        });
        self.arena.extend_from_slice(id);
        let hash = self.hasher.hash_one(id);
        let (hasher, arena, entries) = (&self.hasher, &self.arena, &self.entries);
        self.table.insert_unique(hash, index, |&other| {
            let other = other as usize;
            let start = entries[other].offset as usize;
            let end = entries
                .get(other + 1)
                .map_or(arena.len(), |next| next.offset as usize);
            hasher.hash_one(&arena[start..end])
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, for memory accounting.
    pub fn memory(&self) -> usize {
        self.arena.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

/// The id index of one database (Python's view of [`Ids`]).
#[pyclass(module = "kilndb._core")]
#[derive(Default)]
pub struct IdIndex {
    pub ids: Ids,
}

#[pymethods]
impl IdIndex {
    #[new]
    fn new() -> Self {
        IdIndex::default()
    }

    /// The position stored under `id`, or `default`.
    #[pyo3(signature = (id, default = None))]
    fn get(&self, id: &str, default: Option<u64>) -> Option<u64> {
        self.ids.get(id).or(default)
    }

    fn __getitem__(&self, id: &str) -> PyResult<u64> {
        self.ids
            .get(id)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(id.to_owned()))
    }

    fn __setitem__(&mut self, py: Python<'_>, id: &str, position: i64) -> PyResult<()> {
        guard(py, || {
            if position < 1 {
                return Err(invalid_argument(py, format!("bad position {position}")));
            }
            self.ids.insert(id, position as u64);
            Ok(())
        })
    }

    fn __contains__(&self, id: &str) -> bool {
        self.ids.get(id).is_some()
    }

    fn __len__(&self) -> usize {
        self.ids.len()
    }

    /// Index the `{position: id}` of a hint file.
    fn load_hint(&mut self, py: Python<'_>, ids: &Bound<'_, PyDict>) -> PyResult<()> {
        guard(py, || {
            for (position, id) in ids.iter() {
                let position: u64 = position.extract()?;
                self.ids.insert(id.extract::<&str>()?, position);
            }
            Ok(())
        })
    }

    /// Bytes held by the index.
    #[getter]
    fn memory(&self) -> usize {
        self.ids.memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_repointed_and_counted() {
        let mut ids = Ids::default();
        assert!(ids.is_empty());
        for n in 0..10_000u64 {
            ids.insert(&format!("cmd-{n}"), n + 1);
        }
        assert_eq!(ids.len(), 10_000);
        assert_eq!(ids.get("cmd-0"), Some(1));
        assert_eq!(ids.get("cmd-9999"), Some(10_000));
        assert_eq!(ids.get("cmd-10000"), None);
        assert_eq!(ids.get(""), None);
        ids.insert("cmd-5", 77);
        assert_eq!(ids.get("cmd-5"), Some(77));
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn prefixes_and_empty_ids_are_distinct() {
        let mut ids = Ids::default();
        ids.insert("ab", 1);
        ids.insert("a", 2);
        ids.insert("", 3);
        ids.insert("abc", 4);
        assert_eq!(
            [ids.get("ab"), ids.get("a"), ids.get(""), ids.get("abc")],
            [Some(1), Some(2), Some(3), Some(4)]
        );
    }

    #[test]
    fn a_million_ids_take_under_sixty_bytes_each() {
        let mut ids = Ids::default();
        for n in 0..1_000_000u64 {
            ids.insert(&format!("order-{n:020}"), n + 1);
        }
        assert!(ids.memory() / 1_000_000 < 60, "{} bytes", ids.memory());
        assert_eq!(ids.get("order-00000000000000123456"), Some(123_457));
    }
}
