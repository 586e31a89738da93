//! `kilndb._core`: the native core of KilnDB.
//!
//! The Python package is the public face; this module implements the formats it
//! declares (frames, records, the log's appends and group commit, the keydir and scans) and is called once per batch or
//! buffer, never once per item inside a lock. Every function turns a panic into
//! `kilndb.KilnError` ([`errors::guard`]) and raises the `kilndb.errors` classes.

use pyo3::prelude::*;

mod check;
mod disk;
pub mod errors;
pub mod frame;
pub mod ids;
mod import;
pub mod index;
pub mod json;
pub mod jsonw;
pub mod keydir;
mod py_frame;
mod py_json;
mod py_keydir;
mod pyfact;
mod read;
pub mod record;
mod requests;
mod scan;
mod ship;
mod stage;
mod streams;

/// Panics on purpose: lets the tests prove that a bug in the core reaches Python as
/// `KilnError` instead of aborting the process.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: &str) -> PyResult<()> {
    errors::guard(py, || panic!("{message}"))
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add("PREALLOCATE_STEP", disk::PREALLOCATE_STEP)?;
    module.add_function(wrap_pyfunction!(py_frame::crc32, module)?)?;
    module.add_function(wrap_pyfunction!(py_frame::encode_frame, module)?)?;
    module.add_function(wrap_pyfunction!(py_frame::encode_frames, module)?)?;
    module.add_class::<py_frame::FrameDecoder>()?;
    module.add_class::<py_frame::FrameReader>()?;
    module.add_class::<py_keydir::KeyDir>()?;
    module.add_class::<ids::IdIndex>()?;
    module.add_function(wrap_pyfunction!(py_json::dumps, module)?)?;
    module.add_function(wrap_pyfunction!(py_json::canonical_json, module)?)?;
    module.add_function(wrap_pyfunction!(py_json::value_hash, module)?)?;
    module.add_function(wrap_pyfunction!(py_json::hash_value, module)?)?;
    module.add_function(wrap_pyfunction!(py_json::loads, module)?)?;
    module.add_function(wrap_pyfunction!(py_json::loads_many, module)?)?;
    module.add_function(wrap_pyfunction!(index::index_file, module)?)?;
    module.add_class::<index::IndexedFile>()?;
    module.add_function(wrap_pyfunction!(check::check_file, module)?)?;
    module.add_function(wrap_pyfunction!(ship::parse_shipment, module)?)?;
    module.add_function(wrap_pyfunction!(ship::ship_units, module)?)?;
    module.add_function(wrap_pyfunction!(read::read_records, module)?)?;
    module.add_function(wrap_pyfunction!(read::read_planned, module)?)?;
    module.add_function(wrap_pyfunction!(read::read_fact, module)?)?;
    module.add_class::<scan::FactScanner>()?;
    module.add_function(wrap_pyfunction!(requests::plain_write_run, module)?)?;
    module.add_function(wrap_pyfunction!(requests::write_replies, module)?)?;
    module.add_function(wrap_pyfunction!(pyfact::facts_from_dicts, module)?)?;
    module.add_class::<stage::Stager>()?;
    module.add_class::<stage::Staged>()?;
    module.add_function(wrap_pyfunction!(import::read_import_lines, module)?)?;
    module.add_class::<import::ImportLines>()?;
    module.add_function(wrap_pyfunction!(disk::append, module)?)?;
    module.add_function(wrap_pyfunction!(disk::copy_frames, module)?)?;
    module.add_function(wrap_pyfunction!(disk::sync_file, module)?)?;
    module.add_function(wrap_pyfunction!(disk::truncate_file, module)?)?;
    module.add_function(wrap_pyfunction!(disk::set_io_hook, module)?)?;
    module.add_class::<disk::GroupCommit>()?;
    module.add_function(wrap_pyfunction!(streams::produce_records, module)?)?;
    module.add_function(wrap_pyfunction!(streams::produced_entries, module)?)?;
    module.add_function(wrap_pyfunction!(streams::produce_writes, module)?)?;
    module.add_function(wrap_pyfunction!(streams::produced_wire, module)?)?;
    module.add_function(wrap_pyfunction!(streams::entries_wire, module)?)?;
    module.add_function(wrap_pyfunction!(streams::entries_from_wire, module)?)?;
    module.add_function(wrap_pyfunction!(streams::consume_entries, module)?)?;
    module.add_function(wrap_pyfunction!(_panic_for_tests, module)?)?;
    Ok(())
}
