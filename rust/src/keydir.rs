//! The keydir: the in-memory index of every retained fact, compactly (no Python here;
//! `py_keydir` wraps it as `kilndb._core.KeyDir`).
//!
//! Theory of operation (the model of `kilndb/storage/keydir.py`)
//! -------------------------------------------------------------
//! *Per position* (the database's gap-free commit order starting at `base`), four
//! columns indexed by `position - base`:
//!
//! * `loc`   u64  `file_id << 40 | offset` of the fact's frame; 0 = not retained
//! * `size`  u32  frame length in bytes
//! * `seq`   u32  the fact's seq, bit 31 set for a tombstone
//! * `ttime` f64  transaction time, non-decreasing (padding copies the previous one),
//!   so "as of" is a bisection
//!
//! *Per (store, key)*: the ascending positions of its retained facts; the newest is the
//! key's latest. Stores are interned to `u32` ids. Every key's bytes live in one arena;
//! an [`Entry`] (24 bytes) names its key by offset and length, its store, its slot in
//! its store's key list and its positions: the only one inline (`first`), or an
//! overflow list once the key has several. A `HashTable<u32>` of entry indexes, hashed
//! by (store id, key bytes), finds an entry. Positions are kept as `u32` indexes
//! relative to `base`, so one keydir holds at most `u32::MAX` positions.
//!
//! *Per data file and store*: the highest position freed there since the file was last
//! compacted (`take_dropped`), so that compaction can tell each store how far the facts
//! it removes reach; a freed position's column entries do not keep its store.
//!
//! Removing a key swaps the last entry into its place (the table and the store list are
//! repointed), so entries stay dense; the arena is compacted once half of it is garbage.
//!
//! At one fact per key this is about 70 bytes per key all included: 24 of columns, 24
//! of entry, about 10 of hash table, 4 of store list and the key's bytes.
//!
//! Every input is validated before anything changes (a batch is applied whole or not at
//! all, short of running out of memory), and allocations are fallible: nothing here
//! panics on any input.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::mem::size_of;
use std::ops::Range;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

/// Bit 31 of a raw seq: the fact is a tombstone.
pub const TOMBSTONE: u32 = 1 << 31;
/// `loc` is `file_id << OFFSET_BITS | offset`.
pub const OFFSET_BITS: u32 = 40;
pub const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// The largest file id a location can hold (24 bits).
pub const MAX_FILE_ID: u64 = (1 << (64 - OFFSET_BITS)) - 1;
/// The most positions one keydir indexes (their indexes are `u32` below `u32::MAX`).
pub const MAX_POSITIONS: usize = u32::MAX as usize;
/// The longest key in UTF-8 bytes (its length is kept in 16 bits).
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;
/// The arena is addressed with 48 bits.
const ARENA_LIMIT: u64 = 1 << 48;
/// `Entry::more` of a key with a single retained position.
const SINGLE: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A new position that is not above the last indexed one.
    NotAbove { position: i64, last: i64 },
    /// An argument out of range or inconsistent.
    Invalid(String),
    /// An allocation failed.
    NoMemory,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotAbove { position, last } => {
                write!(f, "position {position} is not above {last}")
            }
            Error::Invalid(message) => f.write_str(message),
            Error::NoMemory => f.write_str("out of memory while growing the keydir"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn no_memory<E>(_: E) -> Error {
    Error::NoMemory
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}

/// A fact to index (`add`, `add_many`); its file id is given per batch.
#[derive(Debug, Clone, Copy)]
pub struct NewFact<'a> {
    pub store: &'a str,
    pub key: &'a str,
    pub position: i64,
    pub offset: i64,
    pub size: i64,
    pub seq: i64,
    pub deleted: bool,
    pub ttime: f64,
}

/// A hint file's columns, little-endian: positions u64, offsets u64, sizes u32, seqs
/// u32 (tombstone bit included), ttimes f64, store_index u32 (into `store_names`);
/// one key per fact.
#[derive(Debug, Clone, Copy)]
pub struct HintColumns<'a> {
    pub positions: &'a [u8],
    pub offsets: &'a [u8],
    pub sizes: &'a [u8],
    pub seqs: &'a [u8],
    pub ttimes: &'a [u8],
    pub store_index: &'a [u8],
    pub store_names: &'a [&'a str],
    pub keys: &'a [&'a str],
}

impl HintColumns<'_> {
    /// Why the numeric columns do not hold one entry per key, if they do not.
    pub fn length_error(&self) -> Option<String> {
        let count = self.keys.len();
        let expected = [
            ("positions", self.positions.len(), 8),
            ("offsets", self.offsets.len(), 8),
            ("sizes", self.sizes.len(), 4),
            ("seqs", self.seqs.len(), 4),
            ("ttimes", self.ttimes.len(), 8),
            ("store_index", self.store_index.len(), 4),
        ];
        expected.into_iter().find_map(|(name, len, width)| {
            (Some(len) != count.checked_mul(width)).then(|| {
                format!(
                    "hint column {name} has {len} bytes, expected {count} x {width} (one per key)"
                )
            })
        })
    }
}

/// `(file_id, size)` of a position that stopped being retained.
pub type Freed = (u64, u32);

/// One (store, key).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Low 32 bits of the key's offset in the arena.
    key_lo: u32,
    /// High 16 bits of the key's offset, then its 16-bit length.
    key_hi_len: u32,
    store: u32,
    /// Index of this entry in its store's key list.
    slot: u32,
    /// The key's only retained position (index) when `more == SINGLE`.
    first: u32,
    /// Index of the overflow list holding every retained position, or `SINGLE`.
    more: u32,
}

impl Entry {
    fn key_range(&self) -> Range<usize> {
        let start = u64::from(self.key_hi_len >> 16) << 32 | u64::from(self.key_lo);
        let start = start as usize;
        start..start + (self.key_hi_len & 0xFFFF) as usize
    }

    fn set_key(&mut self, start: usize, len: usize) {
        let start = start as u64;
        self.key_lo = start as u32;
        self.key_hi_len = ((start >> 32) as u32) << 16 | len as u32;
    }
}

#[derive(Debug, Default)]
struct Store {
    name: Box<str>,
    /// Entry indexes of the store's keys.
    keys: Vec<u32>,
    /// Retained facts of the store.
    facts: u64,
}

fn hash_key(hasher: &DefaultHashBuilder, store: u32, key: &[u8]) -> u64 {
    let mut state = hasher.build_hasher();
    state.write_u32(store);
    state.write(key);
    state.finish()
}

/// The hash of an entry already indexed (for the table's growth).
fn rehash<'a>(
    hasher: &'a DefaultHashBuilder,
    arena: &'a [u8],
    entries: &'a [Entry],
) -> impl Fn(&u32) -> u64 + 'a {
    move |&i| {
        let entry = &entries[i as usize];
        hash_key(hasher, entry.store, &arena[entry.key_range()])
    }
}

fn pack_loc(file_id: i64, offset: i64) -> Result<u64> {
    if !(0..=MAX_FILE_ID as i64).contains(&file_id) {
        return Err(invalid(format!(
            "file_id {file_id} is out of range (0..={MAX_FILE_ID})"
        )));
    }
    if !(0..=OFFSET_MASK as i64).contains(&offset) {
        return Err(invalid(format!(
            "offset {offset} is out of range (0..={OFFSET_MASK})"
        )));
    }
    let loc = (file_id as u64) << OFFSET_BITS | offset as u64;
    if loc == 0 {
        return Err(invalid(
            "file 0 at offset 0 cannot hold a fact (location 0 means not retained)".into(),
        ));
    }
    Ok(loc)
}

fn check_seq(seq: i64, deleted: bool) -> Result<u32> {
    if !(0..i64::from(TOMBSTONE)).contains(&seq) {
        return Err(invalid(format!("seq {seq} is out of range (0..2**31)")));
    }
    Ok(seq as u32 | if deleted { TOMBSTONE } else { 0 })
}

fn check_size(size: i64) -> Result<u32> {
    u32::try_from(size).map_err(|_| invalid(format!("size {size} is out of range (0..2**32)")))
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "key of {} bytes is longer than {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn le_u64(bytes: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
    u64::from_le_bytes(word)
}

pub(crate) fn le_u32(bytes: &[u8], i: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[4 * i..4 * i + 4]);
    u32::from_le_bytes(word)
}

/// A new position's columns, validated.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    index: u32,
    loc: u64,
    size: u32,
    seq: u32,
    ttime: f64,
}

#[derive(Debug)]
pub struct KeyDir {
    base: i64,
    loc: Vec<u64>,
    size: Vec<u32>,
    seq: Vec<u32>,
    ttime: Vec<f64>,
    /// Retained facts.
    facts: u64,
    arena: Vec<u8>,
    /// Bytes of the arena that no entry names any more.
    garbage: usize,
    entries: Vec<Entry>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    overflow: Vec<Vec<u32>>,
    overflow_free: Vec<u32>,
    stores: Vec<Store>,
    store_ids: HashMap<Box<str>, u32>,
    store_free: Vec<u32>,
    /// file id -> store name -> the highest position of the store freed in that file
    /// and not yet taken by `take_dropped`. Keyed by name: an emptied store's id is
    /// reused by the next new store.
    dropped: HashMap<u64, HashMap<Box<str>, i64>>,
}

impl KeyDir {
    /// An empty keydir whose first position is `base` (0 ..= 2**62).
    pub fn new(base: i64) -> Result<Self> {
        if !(0..=1 << 62).contains(&base) {
            return Err(invalid(format!("base {base} is out of range (0..=2**62)")));
        }
        Ok(KeyDir {
            base,
            loc: Vec::new(),
            size: Vec::new(),
            seq: Vec::new(),
            ttime: Vec::new(),
            facts: 0,
            arena: Vec::new(),
            garbage: 0,
            entries: Vec::new(),
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            overflow: Vec::new(),
            overflow_free: Vec::new(),
            stores: Vec::new(),
            store_ids: HashMap::new(),
            store_free: Vec::new(),
            dropped: HashMap::new(),
        })
    }

    // -- sizes -------------------------------------------------------------------------

    pub fn base(&self) -> i64 {
        self.base
    }

    /// Positions indexed (retained or not).
    pub fn len(&self) -> usize {
        self.loc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loc.is_empty()
    }

    pub fn last_position(&self) -> i64 {
        self.base + self.loc.len() as i64 - 1
    }

    /// Retained facts.
    pub fn facts(&self) -> u64 {
        self.facts
    }

    pub fn key_count(&self) -> usize {
        self.entries.len()
    }

    /// Stores holding retained facts.
    pub fn store_count(&self) -> usize {
        self.store_ids.len()
    }

    /// Bytes allocated by this keydir (from the real capacities).
    pub fn memory_bytes(&self) -> usize {
        let columns = self.loc.capacity() * size_of::<u64>()
            + self.size.capacity() * size_of::<u32>()
            + self.seq.capacity() * size_of::<u32>()
            + self.ttime.capacity() * size_of::<f64>();
        let keys = self.arena.capacity()
            + self.entries.capacity() * size_of::<Entry>()
            + self.table.allocation_size();
        let overflow = self.overflow.capacity() * size_of::<Vec<u32>>()
            + self
                .overflow
                .iter()
                .map(|list| list.capacity() * size_of::<u32>())
                .sum::<usize>()
            + self.overflow_free.capacity() * size_of::<u32>();
        let stores = self.stores.capacity() * size_of::<Store>()
            + self
                .stores
                .iter()
                .map(|s| s.name.len() + s.keys.capacity() * size_of::<u32>())
                .sum::<usize>()
            + self.store_ids.allocation_size()
            + self.store_ids.keys().map(|name| name.len()).sum::<usize>()
            + self.store_free.capacity() * size_of::<u32>();
        let dropped = self.dropped.allocation_size()
            + self
                .dropped
                .values()
                .map(|in_file| {
                    in_file.allocation_size() + in_file.keys().map(|s| s.len()).sum::<usize>()
                })
                .sum::<usize>();
        size_of::<Self>() + columns + keys + overflow + stores + dropped
    }

    // -- positions ---------------------------------------------------------------------

    fn index_of(&self, position: i64) -> Option<usize> {
        let index = usize::try_from(position.checked_sub(self.base)?).ok()?;
        (index < self.loc.len()).then_some(index)
    }

    fn position_of(&self, index: u32) -> i64 {
        self.base + i64::from(index)
    }

    /// The index of a new position, which must be above `base + next - 1`.
    fn new_index(&self, position: i64, next: usize) -> Result<u32> {
        let last = self.base + next as i64 - 1;
        if position <= last {
            return Err(Error::NotAbove { position, last });
        }
        let index = (position - self.base) as u64;
        if index >= MAX_POSITIONS as u64 {
            return Err(invalid(format!(
                "position {position} is beyond the keydir's range (base + {})",
                MAX_POSITIONS - 1
            )));
        }
        Ok(index as u32)
    }

    fn reserve_positions(&mut self, count: usize) -> Result<()> {
        self.loc.try_reserve(count).map_err(no_memory)?;
        self.size.try_reserve(count).map_err(no_memory)?;
        self.seq.try_reserve(count).map_err(no_memory)?;
        self.ttime.try_reserve(count).map_err(no_memory)
    }

    /// Append `count` unretained positions (capacity reserved).
    fn pad(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        let last_time = self.ttime.last().copied().unwrap_or(0.0);
        let len = self.loc.len() + count;
        self.loc.resize(len, 0);
        self.size.resize(len, 0);
        self.seq.resize(len, 0);
        self.ttime.resize(len, last_time);
    }

    /// Pad up to a prepared position and append it (capacity reserved).
    fn push(&mut self, fact: &Prepared) {
        self.pad(fact.index as usize - self.loc.len());
        self.loc.push(fact.loc);
        self.size.push(fact.size);
        self.seq.push(fact.seq);
        self.ttime.push(fact.ttime);
    }

    /// Make `position` the last indexed position (unretained) if it is beyond it.
    pub fn pad_to(&mut self, position: i64) -> Result<()> {
        if position <= self.last_position() {
            return Ok(());
        }
        let index = self.new_index(position, self.loc.len())? as usize;
        let count = index + 1 - self.loc.len();
        self.reserve_positions(count)?;
        self.pad(count);
        Ok(())
    }

    /// Index one fact; `position` must be above every indexed position.
    pub fn add(&mut self, file_id: i64, fact: &NewFact<'_>) -> Result<()> {
        self.add_many(file_id, std::slice::from_ref(fact))
    }

    /// A new fact's columns, validated; `next` is the first index not yet used.
    fn prepare(&self, file_id: i64, fact: &NewFact<'_>, next: usize) -> Result<Prepared> {
        let index = self.new_index(fact.position, next)?;
        check_key(fact.key)?;
        Ok(Prepared {
            index,
            loc: pack_loc(file_id, fact.offset)?,
            size: check_size(fact.size)?,
            seq: check_seq(fact.seq, fact.deleted)?,
            ttime: fact.ttime,
        })
    }

    /// Index a batch of facts of one file, positions ascending and above every indexed
    /// position (gaps are padded unretained). Validated whole before anything changes.
    pub fn add_many(&mut self, file_id: i64, facts: &[NewFact<'_>]) -> Result<()> {
        let mut next = self.loc.len();
        for fact in facts {
            next = self.prepare(file_id, fact, next)?.index as usize + 1;
        }
        self.reserve_positions(next - self.loc.len())?;
        let mut current: Option<(&str, u32)> = None;
        for fact in facts {
            let prepared = self.prepare(file_id, fact, self.loc.len())?;
            let store = match current {
                Some((name, id)) if name == fact.store => id,
                _ => {
                    let id = self.intern_store(fact.store)?;
                    current = Some((fact.store, id));
                    id
                }
            };
            self.push(&prepared);
            self.index_key(store, fact.key, prepared.index)?;
        }
        Ok(())
    }

    /// Fact `i` of a hint's columns (lengths checked) and its store's index in
    /// `store_names`, validated; `next` is the first index not yet used.
    fn prepare_hint(
        &self,
        file_id: i64,
        columns: &HintColumns<'_>,
        i: usize,
        next: usize,
    ) -> Result<(Prepared, usize)> {
        let position = i64::try_from(le_u64(columns.positions, i)).unwrap_or(i64::MAX);
        let index = self.new_index(position, next)?;
        check_key(columns.keys[i])?;
        let offset = i64::try_from(le_u64(columns.offsets, i)).unwrap_or(i64::MAX);
        let store = le_u32(columns.store_index, i) as usize;
        if store >= columns.store_names.len() {
            return Err(invalid(format!(
                "hint store index {store} is out of range ({} store names)",
                columns.store_names.len()
            )));
        }
        let fact = Prepared {
            index,
            loc: pack_loc(file_id, offset)?,
            size: le_u32(columns.sizes, i),
            seq: le_u32(columns.seqs, i),
            ttime: f64::from_le_bytes(le_u64(columns.ttimes, i).to_le_bytes()),
        };
        Ok((fact, store))
    }

    /// Index a hint file's columns (positions ascending, above every indexed position).
    /// Validated whole before anything changes.
    pub fn load_columns(&mut self, file_id: i64, columns: &HintColumns<'_>) -> Result<()> {
        let count = columns.keys.len();
        if let Some(error) = columns.length_error() {
            return Err(invalid(error));
        }
        let mut next = self.loc.len();
        for i in 0..count {
            next = self.prepare_hint(file_id, columns, i, next)?.0.index as usize + 1;
        }
        self.reserve_positions(next - self.loc.len())?;
        // Interned on first use, so that a name no fact uses makes no store.
        let mut ids: Vec<Option<u32>> = vec![None; columns.store_names.len()];
        for (i, key) in columns.keys.iter().enumerate() {
            let (fact, which) = self.prepare_hint(file_id, columns, i, self.loc.len())?;
            let store = match ids[which] {
                Some(id) => id,
                None => {
                    let id = self.intern_store(columns.store_names[which])?;
                    ids[which] = Some(id);
                    id
                }
            };
            self.push(&fact);
            self.index_key(store, key, fact.index)?;
        }
        Ok(())
    }

    /// `(file_id, offset, size)` of a retained fact.
    pub fn location(&self, position: i64) -> Option<(u64, u64, u32)> {
        let index = self.index_of(position)?;
        let loc = self.loc[index];
        (loc != 0).then(|| (loc >> OFFSET_BITS, loc & OFFSET_MASK, self.size[index]))
    }

    /// Point a retained fact at its new place (compaction).
    pub fn relocate(&mut self, position: i64, file_id: i64, offset: i64) -> Result<()> {
        let loc = pack_loc(file_id, offset)?;
        match self.index_of(position) {
            Some(index) if self.loc[index] != 0 => {
                self.loc[index] = loc;
                Ok(())
            }
            _ => Err(invalid(format!("position {position} is not retained"))),
        }
    }

    pub fn is_retained(&self, position: i64) -> bool {
        self.index_of(position)
            .is_some_and(|index| self.loc[index] != 0)
    }

    fn indexed(&self, position: i64) -> Result<usize> {
        self.index_of(position).ok_or_else(|| {
            invalid(format!(
                "position {position} is not indexed ({}..={})",
                self.base,
                self.last_position()
            ))
        })
    }

    /// `(seq, deleted)` of an indexed position (kept after the fact is dropped).
    pub fn seq_of(&self, position: i64) -> Result<(u32, bool)> {
        let raw = self.seq[self.indexed(position)?];
        Ok((raw & !TOMBSTONE, raw & TOMBSTONE != 0))
    }

    pub fn ttime_of(&self, position: i64) -> Result<f64> {
        Ok(self.ttime[self.indexed(position)?])
    }

    /// How many positions have a transaction time `<= as_of` (bisect_right).
    fn count_at_time(&self, as_of: f64) -> usize {
        self.ttime
            .partition_point(|&t| t.partial_cmp(&as_of) != Some(Ordering::Greater))
    }

    /// The last position whose transaction time is `<= as_of` (`base - 1` if none).
    pub fn position_at_time(&self, as_of: f64) -> i64 {
        self.base + self.count_at_time(as_of) as i64 - 1
    }

    pub fn first_retained_at_or_after(&self, position: i64) -> Option<i64> {
        let start = position
            .checked_sub(self.base)
            .map_or(0, |index| usize::try_from(index).unwrap_or(0));
        let found = self.loc.get(start..)?.iter().position(|&loc| loc != 0)?;
        Some(self.base + (start + found) as i64)
    }

    // -- keys --------------------------------------------------------------------------

    fn intern_store(&mut self, name: &str) -> Result<u32> {
        if let Some(&id) = self.store_ids.get(name) {
            return Ok(id);
        }
        self.store_ids.try_reserve(1).map_err(no_memory)?;
        let id = match self.store_free.pop() {
            Some(id) => id,
            None => {
                self.stores.try_reserve(1).map_err(no_memory)?;
                self.stores.push(Store::default());
                (self.stores.len() - 1) as u32
            }
        };
        let name: Box<str> = name.into();
        self.stores[id as usize].name = name.clone();
        self.store_ids.insert(name, id);
        Ok(id)
    }

    fn find(&self, store: &str, key: &str) -> Option<u32> {
        let &store = self.store_ids.get(store)?;
        let key = key.as_bytes();
        let hash = hash_key(&self.hasher, store, key);
        let (entries, arena) = (&self.entries, &self.arena);
        self.table
            .find(hash, |&i| {
                let entry = &entries[i as usize];
                entry.store == store && &arena[entry.key_range()] == key
            })
            .copied()
    }

    fn entry_positions<'a>(&'a self, entry: &'a Entry) -> &'a [u32] {
        if entry.more == SINGLE {
            std::slice::from_ref(&entry.first)
        } else {
            &self.overflow[entry.more as usize]
        }
    }

    fn key_positions(&self, store: &str, key: &str) -> &[u32] {
        match self.find(store, key) {
            Some(i) => self.entry_positions(&self.entries[i as usize]),
            None => &[],
        }
    }

    /// Record a new retained position of (store, key), creating the key if needed.
    fn index_key(&mut self, store: u32, key: &str, index: u32) -> Result<()> {
        let key = key.as_bytes();
        let hash = hash_key(&self.hasher, store, key);
        let (entries, arena) = (&self.entries, &self.arena);
        let found = self
            .table
            .find(hash, |&i| {
                let entry = &entries[i as usize];
                entry.store == store && &arena[entry.key_range()] == key
            })
            .copied();
        match found {
            Some(i) => self.append_position(i, index)?,
            None => self.new_entry(store, key, hash, index)?,
        }
        self.stores[store as usize].facts += 1;
        self.facts += 1;
        Ok(())
    }

    fn append_position(&mut self, i: u32, index: u32) -> Result<()> {
        let entry = self.entries[i as usize];
        if entry.more != SINGLE {
            let list = &mut self.overflow[entry.more as usize];
            list.try_reserve(1).map_err(no_memory)?;
            list.push(index);
            return Ok(());
        }
        let mut list = Vec::new();
        list.try_reserve_exact(4).map_err(no_memory)?;
        list.extend([entry.first, index]);
        let slot = match self.overflow_free.pop() {
            Some(slot) => {
                self.overflow[slot as usize] = list;
                slot
            }
            None => {
                self.overflow.try_reserve(1).map_err(no_memory)?;
                self.overflow.push(list);
                (self.overflow.len() - 1) as u32
            }
        };
        self.entries[i as usize].more = slot;
        Ok(())
    }

    fn new_entry(&mut self, store: u32, key: &[u8], hash: u64, index: u32) -> Result<()> {
        let start = self.arena.len();
        if (start + key.len()) as u64 > ARENA_LIMIT {
            return Err(Error::NoMemory);
        }
        self.arena.try_reserve(key.len()).map_err(no_memory)?;
        self.entries.try_reserve(1).map_err(no_memory)?;
        let keys = &mut self.stores[store as usize].keys;
        keys.try_reserve(1).map_err(no_memory)?;
        let slot = keys.len() as u32;
        let id = self.entries.len() as u32;
        let Self {
            table,
            hasher,
            arena,
            entries,
            ..
        } = self;
        table
            .try_reserve(1, rehash(hasher, arena, entries))
            .map_err(no_memory)?;
        arena.extend_from_slice(key);
        let mut entry = Entry {
            key_lo: 0,
            key_hi_len: 0,
            store,
            slot,
            first: index,
            more: SINGLE,
        };
        entry.set_key(start, key.len());
        entries.push(entry);
        table.insert_unique(hash, id, rehash(hasher, arena, entries));
        self.stores[store as usize].keys.push(id);
        Ok(())
    }

    /// Forget entry `i` (whose positions are already freed): the last entry takes its
    /// place, and its store goes when it has no key left.
    fn remove_entry(&mut self, i: u32) {
        let entry = self.entries[i as usize];
        if entry.more != SINGLE {
            self.release_overflow(entry.more);
        }
        let hash = hash_key(&self.hasher, entry.store, &self.arena[entry.key_range()]);
        if let Ok(found) = self.table.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.garbage += entry.key_range().len();
        let store = &mut self.stores[entry.store as usize];
        store.keys.swap_remove(entry.slot as usize);
        if let Some(&moved) = store.keys.get(entry.slot as usize) {
            self.entries[moved as usize].slot = entry.slot;
        }
        if store.keys.is_empty() {
            let name = std::mem::take(&mut store.name);
            store.keys = Vec::new();
            store.facts = 0;
            self.store_ids.remove(&name);
            self.store_free.push(entry.store);
        }
        let last = (self.entries.len() - 1) as u32;
        self.entries.swap_remove(i as usize);
        if i != last {
            let moved = self.entries[i as usize];
            let hash = hash_key(&self.hasher, moved.store, &self.arena[moved.key_range()]);
            if let Some(slot) = self.table.find_mut(hash, |&j| j == last) {
                *slot = i;
            }
            self.stores[moved.store as usize].keys[moved.slot as usize] = i;
        }
    }

    fn release_overflow(&mut self, slot: u32) {
        self.overflow[slot as usize] = Vec::new();
        if slot as usize == self.overflow.len() - 1 {
            self.overflow.pop();
        } else {
            self.overflow_free.push(slot);
        }
    }

    /// Stop retaining position `index` of `store`.
    fn free_position(&mut self, store: u32, index: u32, freed: &mut Vec<Freed>) {
        let position = self.position_of(index);
        let index = index as usize;
        let loc = self.loc[index];
        if loc != 0 {
            let file_id = loc >> OFFSET_BITS;
            freed.push((file_id, self.size[index]));
            let name = &self.stores[store as usize].name;
            let in_file = self.dropped.entry(file_id).or_default();
            match in_file.get_mut(&**name) {
                Some(highest) => *highest = (*highest).max(position),
                None => {
                    in_file.insert(name.clone(), position);
                }
            }
            self.loc[index] = 0;
            self.facts -= 1;
            self.stores[store as usize].facts -= 1;
        }
    }

    /// Free the positions of entry `i` for which `doomed(ttime, index, is_latest)`
    /// holds; the key goes when none is left. True if the entry was removed.
    fn retain_entry(
        &mut self,
        i: u32,
        mut doomed: impl FnMut(&[f64], u32, bool) -> bool,
        freed: &mut Vec<Freed>,
    ) -> bool {
        let entry = self.entries[i as usize];
        if entry.more == SINGLE {
            if !doomed(&self.ttime, entry.first, true) {
                return false;
            }
            self.free_position(entry.store, entry.first, freed);
            self.remove_entry(i);
            return true;
        }
        let mut list = std::mem::take(&mut self.overflow[entry.more as usize]);
        let latest = list.len() - 1;
        let mut kept = 0;
        for rank in 0..list.len() {
            let index = list[rank];
            if doomed(&self.ttime, index, rank == latest) {
                self.free_position(entry.store, index, freed);
            } else {
                list[kept] = index;
                kept += 1;
            }
        }
        list.truncate(kept);
        match kept {
            0 => {
                self.remove_entry(i);
                true
            }
            1 => {
                self.release_overflow(entry.more);
                let entry = &mut self.entries[i as usize];
                entry.first = list[0];
                entry.more = SINGLE;
                false
            }
            _ => {
                if list.capacity() > 2 * kept + 4 {
                    list.shrink_to(kept);
                }
                self.overflow[entry.more as usize] = list;
                false
            }
        }
    }

    /// After removals: compact the arena once half of it is garbage, and the overflow
    /// lists once half of their slots are free; give back the entries' and table's
    /// memory once three quarters of it is unused.
    fn tidy(&mut self) {
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            let mut arena = Vec::new();
            if arena
                .try_reserve_exact(self.arena.len() - self.garbage)
                .is_ok()
            {
                for entry in &mut self.entries {
                    let range = entry.key_range();
                    let start = arena.len();
                    arena.extend_from_slice(&self.arena[range.clone()]);
                    entry.set_key(start, range.len());
                }
                self.arena = arena;
                self.garbage = 0;
            }
        }
        let free = self.overflow_free.len();
        if free > 1024 && free * 2 > self.overflow.len() {
            let mut dense: Vec<Vec<u32>> = Vec::new();
            if dense.try_reserve_exact(self.overflow.len() - free).is_ok() {
                for entry in &mut self.entries {
                    if entry.more != SINGLE {
                        dense.push(std::mem::take(&mut self.overflow[entry.more as usize]));
                        entry.more = (dense.len() - 1) as u32;
                    }
                }
                self.overflow = dense;
                self.overflow_free = Vec::new();
            }
        }
        let live = self.entries.len();
        if self.entries.capacity() > 1024 && live * 4 < self.entries.capacity() {
            self.entries.shrink_to(live * 2);
            let Self {
                table,
                hasher,
                arena,
                entries,
                ..
            } = self;
            table.shrink_to(live * 2, rehash(hasher, arena, entries));
        }
    }

    /// The positions of (store, key)'s retained facts, ascending.
    pub fn positions(&self, store: &str, key: &str) -> Vec<i64> {
        self.key_positions(store, key)
            .iter()
            .map(|&index| self.position_of(index))
            .collect()
    }

    pub fn latest(&self, store: &str, key: &str) -> Option<i64> {
        let &index = self.key_positions(store, key).last()?;
        Some(self.position_of(index))
    }

    /// `(position, seq, deleted)` of the key's latest fact.
    pub fn latest_state(&self, store: &str, key: &str) -> Option<(i64, u32, bool)> {
        let &index = self.key_positions(store, key).last()?;
        let raw = self.seq[index as usize];
        Some((
            self.position_of(index),
            raw & !TOMBSTONE,
            raw & TOMBSTONE != 0,
        ))
    }

    /// The key's last position whose transaction time is `<= as_of`.
    pub fn position_as_of(&self, store: &str, key: &str, as_of: f64) -> Option<i64> {
        let positions = self.key_positions(store, key);
        let limit = self.count_at_time(as_of);
        let found = positions.partition_point(|&index| (index as usize) < limit);
        found
            .checked_sub(1)
            .map(|rank| self.position_of(positions[rank]))
    }

    /// Positions of the key's facts with `since <= seq <= until`, at most `limit`, only
    /// those `<= visible`; by bisection (a key's seqs grow with its positions).
    pub fn history(
        &self,
        store: &str,
        key: &str,
        since: i64,
        until: Option<i64>,
        limit: Option<usize>,
        visible: Option<i64>,
    ) -> Vec<i64> {
        let positions = self.key_positions(store, key);
        let seq_of = |index: u32| i64::from(self.seq[index as usize] & !TOMBSTONE);
        let stop = match visible {
            Some(visible) => positions.partition_point(|&index| self.position_of(index) <= visible),
            None => positions.len(),
        };
        let start = positions[..stop].partition_point(|&index| seq_of(index) < since);
        let mut end = limit.map_or(stop, |limit| stop.min(start.saturating_add(limit)));
        if let Some(until) = until {
            end = end.min(start + positions[start..stop].partition_point(|&i| seq_of(i) <= until));
        }
        positions[start..end.max(start)]
            .iter()
            .map(|&index| self.position_of(index))
            .collect()
    }

    fn key_str(&self, entry: &Entry) -> &str {
        std::str::from_utf8(&self.arena[entry.key_range()]).unwrap_or_default()
    }

    fn store_entries(&self, store: &str) -> &[u32] {
        match self.store_ids.get(store) {
            Some(&id) => &self.stores[id as usize].keys,
            None => &[],
        }
    }

    fn latest_index(&self, entry: &Entry) -> u32 {
        if entry.more == SINGLE {
            entry.first
        } else {
            self.overflow[entry.more as usize]
                .last()
                .copied()
                .unwrap_or(entry.first)
        }
    }

    /// The store's keys starting with `prefix`, sorted, at most `limit`; with
    /// `live_only`, only those whose latest fact is not a tombstone; with `after`, only
    /// those sorting after it (the last key of the previous page).
    pub fn keys(
        &self,
        store: &str,
        prefix: &str,
        limit: Option<usize>,
        live_only: bool,
        after: Option<&str>,
    ) -> Vec<String> {
        let mut found: Vec<&str> = self
            .store_entries(store)
            .iter()
            .map(|&i| &self.entries[i as usize])
            .filter(|entry| {
                !live_only || self.seq[self.latest_index(entry) as usize] & TOMBSTONE == 0
            })
            .map(|entry| self.key_str(entry))
            .filter(|key| key.starts_with(prefix) && after.is_none_or(|after| *key > after))
            .collect();
        match limit {
            Some(limit) if limit < found.len() => {
                if limit > 0 {
                    found.select_nth_unstable(limit - 1);
                }
                found.truncate(limit);
            }
            _ => {}
        }
        found.sort_unstable();
        found.into_iter().map(str::to_owned).collect()
    }

    /// `(key, latest position)` of every key of `store`, in no particular order.
    pub fn iter_keys(&self, store: &str) -> Vec<(String, i64)> {
        self.store_entries(store)
            .iter()
            .map(|&i| {
                let entry = &self.entries[i as usize];
                let latest = self.position_of(self.latest_index(entry));
                (self.key_str(entry).to_owned(), latest)
            })
            .collect()
    }

    /// Names of the stores holding retained facts, sorted.
    pub fn stores(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store_ids.keys().map(|name| name.to_string()).collect();
        names.sort_unstable();
        names
    }

    pub fn store_facts(&self, store: &str) -> u64 {
        self.store_ids
            .get(store)
            .map_or(0, |&id| self.stores[id as usize].facts)
    }

    /// Stop retaining those of `positions` that are the key's; `(file_id, size)` of
    /// each, in position order. Other positions are ignored.
    pub fn drop_positions(&mut self, store: &str, key: &str, positions: &[i64]) -> Vec<Freed> {
        let mut freed = Vec::new();
        let Some(i) = self.find(store, key) else {
            return freed;
        };
        let mut doomed: Vec<u32> = positions
            .iter()
            .filter_map(|&position| self.index_of(position))
            .map(|index| index as u32)
            .collect();
        doomed.sort_unstable();
        doomed.dedup();
        self.retain_entry(
            i,
            |_, index, _| doomed.binary_search(&index).is_ok(),
            &mut freed,
        );
        self.tidy();
        freed
    }

    /// Free `doomed` positions of every key of `store` with several facts (the latest
    /// one is never freed).
    fn drop_older(
        &mut self,
        store: &str,
        mut doomed: impl FnMut(&[f64], u32) -> bool,
    ) -> Vec<Freed> {
        let mut freed = Vec::new();
        let Some(&id) = self.store_ids.get(store) else {
            return freed;
        };
        let mut slot = 0;
        while slot < self.stores[id as usize].keys.len() {
            let i = self.stores[id as usize].keys[slot];
            if self.entries[i as usize].more != SINGLE {
                let removed = self.retain_entry(
                    i,
                    |ttime, index, latest| !latest && doomed(ttime, index),
                    &mut freed,
                );
                debug_assert!(!removed);
            }
            slot += 1;
        }
        self.tidy();
        freed
    }

    /// `(store, highest position)` of each store whose facts in data file `file_id`
    /// were freed since the last call for that file, sorted by store; forgets them.
    pub fn take_dropped(&mut self, file_id: u64) -> Vec<(String, i64)> {
        let mut dropped: Vec<(String, i64)> = self
            .dropped
            .remove(&file_id)
            .unwrap_or_default()
            .into_iter()
            .map(|(store, position)| (store.into_string(), position))
            .collect();
        dropped.sort_unstable();
        dropped
    }

    /// Free all but each key's latest fact.
    pub fn drop_superseded(&mut self, store: &str) -> Vec<Freed> {
        self.drop_older(store, |_, _| true)
    }

    /// Free every fact but each key's latest whose transaction time is `< horizon`.
    pub fn drop_older_than(&mut self, store: &str, horizon: f64) -> Vec<Freed> {
        self.drop_older(store, |ttime, index| ttime[index as usize] < horizon)
    }

    /// Check every internal invariant (for tests): a description of the first broken.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let n = self.loc.len();
        if self.size.len() != n || self.seq.len() != n || self.ttime.len() != n {
            return Err("columns of different lengths".into());
        }
        let retained = self.loc.iter().filter(|&&loc| loc != 0).count() as u64;
        if retained != self.facts {
            return Err(format!(
                "{retained} retained positions, facts = {}",
                self.facts
            ));
        }
        if self.table.len() != self.entries.len() {
            return Err("table and entries disagree".into());
        }
        let mut owned = vec![false; n];
        let mut total = 0u64;
        let mut garbage = self.arena.len();
        for (i, entry) in self.entries.iter().enumerate() {
            let key = self
                .arena
                .get(entry.key_range())
                .ok_or("key out of the arena")?;
            garbage -= key.len();
            if std::str::from_utf8(key).is_err() {
                return Err(format!("entry {i}: key is not UTF-8"));
            }
            if self.find(&self.stores[entry.store as usize].name, self.key_str(entry))
                != Some(i as u32)
            {
                return Err(format!("entry {i} is not found by its key"));
            }
            let store = self
                .stores
                .get(entry.store as usize)
                .ok_or("store out of range")?;
            if store.keys.get(entry.slot as usize) != Some(&(i as u32)) {
                return Err(format!("entry {i}: wrong slot"));
            }
            let positions = self.entry_positions(entry);
            if positions.is_empty() || (entry.more != SINGLE && positions.len() < 2) {
                return Err(format!("entry {i}: {} positions", positions.len()));
            }
            if positions.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("entry {i}: positions not ascending"));
            }
            for &index in positions {
                let index = index as usize;
                if index >= n || self.loc[index] == 0 || owned[index] {
                    return Err(format!("entry {i}: position index {index} not owned"));
                }
                owned[index] = true;
            }
            total += positions.len() as u64;
        }
        if total != self.facts {
            return Err(format!(
                "keys hold {total} positions, facts = {}",
                self.facts
            ));
        }
        if garbage != self.garbage {
            return Err(format!("arena garbage {garbage}, counted {}", self.garbage));
        }
        for (name, &id) in &self.store_ids {
            let store = &self.stores[id as usize];
            if &store.name != name || store.keys.is_empty() {
                return Err(format!("store {name:?}: bad name or no keys"));
            }
            let facts: u64 = store
                .keys
                .iter()
                .map(|&i| self.entry_positions(&self.entries[i as usize]).len() as u64)
                .sum();
            if facts != store.facts {
                return Err(format!(
                    "store {name:?}: {facts} facts, counted {}",
                    store.facts
                ));
            }
        }
        let mut slots = vec![0u32; self.overflow.len()];
        for entry in self.entries.iter().filter(|entry| entry.more != SINGLE) {
            slots[entry.more as usize] += 1;
        }
        for &slot in &self.overflow_free {
            slots[slot as usize] += 1;
        }
        if slots.iter().any(|&uses| uses != 1) {
            return Err("overflow slots and free list disagree".into());
        }
        let live = self.stores.iter().filter(|s| !s.keys.is_empty()).count();
        if live != self.store_ids.len() || live + self.store_free.len() != self.stores.len() {
            return Err("store ids and free list disagree".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact<'a>(store: &'a str, key: &'a str, position: i64, seq: i64, ttime: f64) -> NewFact<'a> {
        NewFact {
            store,
            key,
            position,
            offset: 100 + position % 1000,
            size: 10 + position % 1000,
            seq,
            deleted: false,
            ttime,
        }
    }

    fn add(kd: &mut KeyDir, store: &str, key: &str, position: i64, seq: i64) {
        kd.add(1, &fact(store, key, position, seq, position as f64))
            .unwrap();
        kd.check_invariants().unwrap();
    }

    #[test]
    fn empty() {
        let kd = KeyDir::new(1).unwrap();
        assert_eq!(kd.last_position(), 0);
        assert_eq!(kd.facts(), 0);
        assert_eq!(kd.latest("s", "k"), None);
        assert_eq!(kd.positions("s", "k"), Vec::<i64>::new());
        assert_eq!(kd.location(1), None);
        assert_eq!(kd.location(-5), None);
        assert_eq!(kd.position_at_time(10.0), 0);
        assert_eq!(kd.first_retained_at_or_after(i64::MIN), None);
        assert!(kd.seq_of(1).is_err());
        assert!(kd.stores().is_empty());
        kd.check_invariants().unwrap();
    }

    #[test]
    fn add_and_query() {
        let mut kd = KeyDir::new(5).unwrap();
        add(&mut kd, "s", "a", 5, 1);
        add(&mut kd, "s", "b", 7, 1);
        add(&mut kd, "s", "a", 8, 2);
        add(&mut kd, "t", "a", 9, 1);
        assert_eq!(kd.last_position(), 9);
        assert_eq!(kd.facts(), 4);
        assert_eq!(kd.key_count(), 3);
        assert_eq!(kd.store_count(), 2);
        assert_eq!(kd.positions("s", "a"), vec![5, 8]);
        assert_eq!(kd.latest("s", "a"), Some(8));
        assert_eq!(kd.latest("t", "a"), Some(9));
        assert_eq!(kd.latest("t", "b"), None);
        assert_eq!(kd.latest_state("s", "a"), Some((8, 2, false)));
        assert_eq!(kd.location(7), Some((1, 107, 17)));
        assert_eq!(kd.location(6), None);
        assert!(!kd.is_retained(6));
        assert_eq!(kd.seq_of(6), Ok((0, false)));
        // padding copies the previous transaction time
        assert_eq!(kd.ttime_of(6), Ok(5.0));
        assert_eq!(kd.position_at_time(7.5), 7);
        assert_eq!(kd.position_at_time(0.0), 4);
        assert_eq!(kd.position_as_of("s", "a", 7.9), Some(5));
        assert_eq!(kd.position_as_of("s", "a", 4.0), None);
        assert_eq!(kd.first_retained_at_or_after(6), Some(7));
        assert_eq!(kd.stores(), vec!["s", "t"]);
        assert_eq!(kd.store_facts("s"), 3);
        assert_eq!(kd.keys("s", "", None, true, None), vec!["a", "b"]);
        let mut keys = kd.iter_keys("s");
        keys.sort();
        assert_eq!(keys, vec![("a".to_owned(), 8), ("b".to_owned(), 7)]);
    }

    #[test]
    fn rejects_bad_input() {
        let mut kd = KeyDir::new(1).unwrap();
        add(&mut kd, "s", "a", 3, 1);
        let err = kd.add(1, &fact("s", "a", 3, 2, 0.0)).unwrap_err();
        assert_eq!(
            err,
            Error::NotAbove {
                position: 3,
                last: 3
            }
        );
        assert_eq!(err.to_string(), "position 3 is not above 3");
        assert!(kd.add(1, &fact("s", "a", -1, 2, 0.0)).is_err());
        assert!(kd
            .add(
                0,
                &NewFact {
                    offset: 0,
                    ..fact("s", "a", 9, 1, 0.0)
                }
            )
            .is_err());
        assert!(kd.add(1 << 24, &fact("s", "a", 9, 1, 0.0)).is_err());
        assert!(kd
            .add(
                1,
                &NewFact {
                    offset: 1 << 40,
                    ..fact("s", "a", 9, 1, 0.0)
                }
            )
            .is_err());
        assert!(kd
            .add(
                1,
                &NewFact {
                    size: -1,
                    ..fact("s", "a", 9, 1, 0.0)
                }
            )
            .is_err());
        assert!(kd.add(1, &fact("s", "a", 9, 1 << 31, 0.0)).is_err());
        assert!(kd.add(1, &fact("s", "a", 9, -1, 0.0)).is_err());
        assert!(kd
            .add(1, &fact("s", &"x".repeat(70000), 9, 1, 0.0))
            .is_err());
        assert!(kd.add(1, &fact("s", "a", 1 << 40, 1, 0.0)).is_err());
        assert!(kd.add(1, &fact("s", "a", i64::MAX, 1, 0.0)).is_err());
        assert!(kd.pad_to(i64::MAX).is_err());
        assert!(KeyDir::new(-1).is_err());
        assert!(KeyDir::new(i64::MAX).is_err());
        // a batch with a bad fact changes nothing
        let batch = [fact("s", "b", 10, 1, 0.0), fact("s", "c", 10, 1, 0.0)];
        assert!(kd.add_many(1, &batch).is_err());
        assert_eq!(kd.last_position(), 3);
        assert_eq!(kd.latest("s", "b"), None);
        assert!(kd.relocate(2, 1, 5).is_err());
        assert!(kd.relocate(3, 0, 0).is_err());
        kd.relocate(3, 2, 5).unwrap();
        assert_eq!(kd.location(3), Some((2, 5, 13)));
        kd.check_invariants().unwrap();
    }

    #[test]
    fn tombstones_and_keys() {
        let mut kd = KeyDir::new(1).unwrap();
        for (i, key) in ["b", "a", "c", "ab"].iter().enumerate() {
            add(&mut kd, "s", key, i as i64 + 1, 1);
        }
        kd.add(
            1,
            &NewFact {
                deleted: true,
                ..fact("s", "c", 5, 2, 5.0)
            },
        )
        .unwrap();
        assert_eq!(kd.latest_state("s", "c"), Some((5, 2, true)));
        assert_eq!(kd.seq_of(5), Ok((2, true)));
        assert_eq!(kd.keys("s", "", None, true, None), vec!["a", "ab", "b"]);
        assert_eq!(
            kd.keys("s", "", None, false, None),
            vec!["a", "ab", "b", "c"]
        );
        assert_eq!(kd.keys("s", "a", None, true, None), vec!["a", "ab"]);
        assert_eq!(kd.keys("s", "", Some(2), true, None), vec!["a", "ab"]);
        assert_eq!(kd.keys("s", "", Some(0), true, None), Vec::<String>::new());
        assert_eq!(kd.keys("x", "", None, true, None), Vec::<String>::new());
        assert_eq!(kd.keys("s", "", None, true, Some("a")), vec!["ab", "b"]);
        assert_eq!(kd.keys("s", "a", Some(1), true, Some("a")), vec!["ab"]);
        assert_eq!(
            kd.keys("s", "", None, true, Some("b")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn history_bisects() {
        let mut kd = KeyDir::new(1).unwrap();
        for seq in 1..=5 {
            add(&mut kd, "s", "k", seq * 2, seq);
        }
        assert_eq!(
            kd.history("s", "k", 0, None, None, None),
            vec![2, 4, 6, 8, 10]
        );
        assert_eq!(kd.history("s", "k", 2, Some(4), None, None), vec![4, 6, 8]);
        assert_eq!(kd.history("s", "k", 2, Some(4), Some(2), None), vec![4, 6]);
        assert_eq!(kd.history("s", "k", 2, None, None, Some(7)), vec![4, 6]);
        assert_eq!(
            kd.history("s", "k", 4, Some(2), None, None),
            Vec::<i64>::new()
        );
        assert_eq!(
            kd.history("s", "k", 0, None, Some(0), None),
            Vec::<i64>::new()
        );
        assert_eq!(kd.history("s", "x", 0, None, None, None), Vec::<i64>::new());
    }

    #[test]
    fn drops() {
        let mut kd = KeyDir::new(1).unwrap();
        add(&mut kd, "s", "a", 1, 1);
        add(&mut kd, "s", "b", 2, 1);
        add(&mut kd, "s", "a", 3, 2);
        add(&mut kd, "s", "a", 4, 3);
        add(&mut kd, "t", "a", 5, 1);
        // another key's position and unknown ones are ignored
        assert_eq!(
            kd.drop_positions("s", "a", &[2, 99, -4, 3, 3]),
            vec![(1, 13)]
        );
        kd.check_invariants().unwrap();
        assert_eq!(kd.positions("s", "a"), vec![1, 4]);
        assert!(kd.is_retained(2));
        assert_eq!(kd.drop_positions("s", "a", &[1]), vec![(1, 11)]);
        assert_eq!(kd.positions("s", "a"), vec![4]);
        kd.check_invariants().unwrap();
        assert_eq!(kd.drop_positions("t", "a", &[5]), vec![(1, 15)]);
        kd.check_invariants().unwrap();
        assert_eq!(kd.stores(), vec!["s"]);
        assert_eq!(kd.store_count(), 1);
        assert_eq!(kd.drop_positions("t", "a", &[5]), vec![]);
        assert_eq!(kd.drop_positions("s", "b", &[2]), vec![(1, 12)]);
        assert_eq!(kd.drop_positions("s", "a", &[4]), vec![(1, 14)]);
        kd.check_invariants().unwrap();
        assert_eq!(kd.facts(), 0);
        assert_eq!(kd.key_count(), 0);
        assert_eq!(kd.store_count(), 0);
        // store ids are reused
        add(&mut kd, "u", "a", 6, 1);
        assert_eq!(kd.stores(), vec!["u"]);
        assert_eq!(kd.first_retained_at_or_after(1), Some(6));
    }

    #[test]
    fn drop_superseded_and_older() {
        let mut kd = KeyDir::new(1).unwrap();
        for p in 1..=9 {
            let key = ["a", "b", "c"][(p % 3) as usize];
            add(&mut kd, "s", key, p, p);
        }
        add(&mut kd, "t", "a", 10, 1);
        add(&mut kd, "t", "a", 11, 2);
        let mut freed = kd.drop_older_than("s", 4.5);
        freed.sort();
        // a: 3 6 9, b: 1 4 7, c: 2 5 8
        assert_eq!(freed, vec![(1, 11), (1, 12), (1, 13), (1, 14)]);
        kd.check_invariants().unwrap();
        assert_eq!(kd.positions("s", "a"), vec![6, 9]);
        assert_eq!(kd.positions("s", "b"), vec![7]);
        assert_eq!(kd.drop_older_than("s", f64::NAN), vec![]);
        let mut freed = kd.drop_superseded("s");
        freed.sort();
        assert_eq!(freed, vec![(1, 15), (1, 16)]);
        kd.check_invariants().unwrap();
        assert_eq!(kd.positions("s", "a"), vec![9]);
        assert_eq!(kd.positions("s", "b"), vec![7]);
        assert_eq!(kd.positions("t", "a"), vec![10, 11]);
        assert_eq!(kd.store_facts("s"), 3);
        assert_eq!(kd.drop_superseded("nope"), vec![]);
        // s lost 1..=6 (all in file 1); t lost nothing yet.
        assert_eq!(kd.take_dropped(1), vec![("s".to_string(), 6)]);
        assert_eq!(kd.take_dropped(1), vec![]);
        kd.drop_superseded("t");
        assert_eq!(kd.take_dropped(2), vec![]);
        assert_eq!(kd.take_dropped(1), vec![("t".to_string(), 10)]);
    }

    #[test]
    fn load_columns_from_bytes() {
        let mut kd = KeyDir::new(1).unwrap();
        add(&mut kd, "s", "a", 1, 1);
        let positions: Vec<u8> = [3u64, 4, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let offsets: Vec<u8> = [30u64, 40, 70]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let sizes: Vec<u8> = [3u32, 4, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let seqs: Vec<u8> = [2u32, 1, 3 | TOMBSTONE]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ttimes: Vec<u8> = [3.0f64, 4.0, 7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let stores: Vec<u8> = [0u32, 2, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let columns = HintColumns {
            positions: &positions,
            offsets: &offsets,
            sizes: &sizes,
            seqs: &seqs,
            ttimes: &ttimes,
            store_index: &stores,
            store_names: &["s", "unused", "t"],
            keys: &["a", "b", "a"],
        };
        let bad = HintColumns {
            sizes: &sizes[..8],
            ..columns
        };
        assert!(kd.load_columns(2, &bad).is_err());
        let bad_store = HintColumns {
            store_names: &["s", "t"],
            ..columns
        };
        assert!(kd.load_columns(2, &bad_store).is_err());
        assert_eq!(kd.last_position(), 1);
        kd.load_columns(2, &columns).unwrap();
        kd.check_invariants().unwrap();
        assert_eq!(kd.last_position(), 7);
        assert_eq!(kd.positions("s", "a"), vec![1, 3, 7]);
        assert_eq!(kd.latest_state("s", "a"), Some((7, 3, true)));
        assert_eq!(kd.location(4), Some((2, 40, 4)));
        assert_eq!(kd.ttime_of(6), Ok(4.0));
        assert_eq!(kd.stores(), vec!["s", "t"]);
        assert!(kd.load_columns(2, &columns).is_err());
    }

    #[test]
    fn churn_keeps_structures_consistent() {
        let mut kd = KeyDir::new(1).unwrap();
        let mut position = 0;
        for round in 0..4 {
            for i in 0..3000 {
                position += 1;
                let key = format!("key-{round}-{}", i % 1500);
                let store = if i % 7 == 0 { "x" } else { "y" };
                kd.add(
                    1,
                    &fact(store, &key, position, i64::from(i), position as f64),
                )
                .unwrap();
            }
            kd.check_invariants().unwrap();
            kd.drop_superseded("y");
            kd.check_invariants().unwrap();
            assert!(kd.overflow_free.len() <= 1024, "overflow compacted");
            for i in 0..1500 {
                let key = format!("key-{round}-{i}");
                let all = kd.positions("x", &key);
                kd.drop_positions("x", &key, &all);
                let all = kd.positions("y", &key);
                kd.drop_positions("y", &key, &all);
            }
            kd.check_invariants().unwrap();
            assert_eq!(kd.key_count(), 0);
            assert_eq!(kd.facts(), 0);
        }
        assert!(kd.arena.len() < 64 * 1024);
    }

    #[test]
    fn memory_per_key() {
        let mut kd = KeyDir::new(1).unwrap();
        let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
        let facts: Vec<NewFact<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| fact("s", key, i as i64 + 1, 1, 0.0))
            .collect();
        for batch in facts.chunks(1000) {
            kd.add_many(1, batch).unwrap();
        }
        assert!(kd.memory_bytes() <= 100 * 100_000, "{}", kd.memory_bytes());
    }
}
