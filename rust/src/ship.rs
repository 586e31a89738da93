//! Checking a replication shipment a follower received, natively.
//!
//! Theory of operation
//! -------------------
//! A shipment is a leader's records, verbatim: facts and batch headers, framed. Before
//! a follower appends it, [`parse_shipment`] checks every CRC, that positions only grow
//! from the follower's end, that no batch header falls inside a batch and that the
//! shipment does not end inside a frame or a batch, raising `ProtocolError` with the
//! messages of `kilndb.storage.shipping.parse_shipment`. It indexes the facts as it goes
//! ([`crate::index::fact_fields`]), so the follower appends the bytes as they came and
//! loads the index into its keydir in one call. A record not laid out as KilnDB writes
//! it is left to the Python parser: the function then returns None.
//!
//! On the leader's side, [`ship_units`] reads the next shipment from a data file: its
//! durable facts and whole batches from an offset, verbatim, up to a count of facts or
//! of bytes, and never part of a batch.

use pyo3::prelude::*;

use pyo3::types::PyBytes;

use crate::errors::{guard, protocol_error};
use crate::frame::{Step, Stop, CRC_SIZE, HEADER_SIZE};
use crate::index::{batch_header, fact_fields, Indexed, IndexedFile};
use crate::py_frame::FrameReader;
use crate::record::{fact_head, BATCH_PREFIX, FACT_PREFIX, FILE_PREFIX};

/// Why a shipment is refused, in the words of the Python parser.
#[derive(Debug, PartialEq)]
enum Refusal {
    Crc,
    InsideFrame,
    InsideBatch,
    HeaderInBatch,
    NotARecord,
    BatchOrder { first: u64, last: u64 },
    Order { position: u64, last: u64 },
}

impl Refusal {
    fn message(&self) -> String {
        match self {
            Refusal::Crc => "frame CRC mismatch".to_owned(),
            Refusal::InsideFrame => "a shipment ends inside a frame".to_owned(),
            Refusal::InsideBatch => "a shipment ends inside a batch".to_owned(),
            Refusal::HeaderInBatch => "a batch header inside a batch".to_owned(),
            Refusal::NotARecord => "a shipment carries facts and batch headers only".to_owned(),
            Refusal::BatchOrder { first, last } => {
                format!("batch at {first} does not follow {last}")
            }
            Refusal::Order { position, last } => {
                format!("position {position} does not follow {last}")
            }
        }
    }
}

/// The facts of `frames` received after position `after` (offsets from the start of
/// `frames`); None if a record needs the Python parser; ProtocolError if refused.
#[pyfunction]
pub fn parse_shipment(py: Python<'_>, frames: &[u8], after: u64) -> PyResult<Option<IndexedFile>> {
    guard(py, || match py.detach(|| walk(frames, after)) {
        Ok(found) => Ok(found.map(|facts| IndexedFile {
            records: facts.len() as u64,
            facts,
            good_end: frames.len() as u64,
            bad_offset: None,
            damage: frames.len() as u64,
            stop_reason: None,
        })),
        Err(refusal) => Err(protocol_error(py, refusal.message())),
    })
}

/// What [`ship_units`] read: the frames, the first and last position and count of
/// their facts, the offset after them, whether the budget was spent, and whether the
/// file's data ended there (no batch still being written).
type Units<'py> = (Bound<'py, PyBytes>, u64, u64, u64, u64, bool, bool);

/// The whole units (single facts and complete batches) of `[start, end)` of the data
/// file open as `fd` whose positions are durable (at most `durable`), read until
/// `max_records` facts or `max_bytes` bytes are reached; None if a record needs the
/// Python reader. Raises ProtocolError for a record of an unknown kind.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn ship_units<'py>(
    py: Python<'py>,
    fd: i32,
    path: String,
    start: u64,
    end: u64,
    durable: u64,
    max_records: u64,
    max_bytes: u64,
) -> PyResult<Option<Units<'py>>> {
    guard(py, || {
        let mut reader = FrameReader::new(fd, start, end, path);
        let mut out: Vec<u8> = Vec::new();
        // Where the unit being read begins in `out`, its facts so far and their count due.
        let (mut unit_start, mut pending, mut expected) = (0usize, 0u64, 0u64);
        let (mut unit_first, mut first, mut last, mut count) = (0u64, 0u64, 0u64, 0u64);
        let (mut end_offset, mut full, mut waiting) = (start, false, false);
        'read: while !reader.finished {
            for (offset, body_start, body_end) in reader.next_ranges(py)? {
                let buf = &reader.buf;
                let body = &buf[body_start..body_end];
                let frame = &buf[body_start - HEADER_SIZE..body_end + CRC_SIZE];
                let frame_end = offset + frame.len() as u64;
                if body.starts_with(FILE_PREFIX) {
                    end_offset = frame_end;
                    continue;
                }
                if body.starts_with(BATCH_PREFIX) {
                    let Some((n, batch_first)) = batch_header(body) else {
                        return Ok(None);
                    };
                    if batch_first + n.saturating_sub(1) > durable {
                        waiting = true;
                        break 'read;
                    }
                    expected = n;
                    out.extend_from_slice(frame);
                    continue;
                }
                if !body.starts_with(FACT_PREFIX) {
                    let path = &reader.path;
                    let message = format!("unknown record at offset {offset} of {path}");
                    return Err(protocol_error(py, message));
                }
                let Some(head) = fact_head(body) else {
                    return Ok(None);
                };
                if head.position > durable {
                    waiting = true;
                    break 'read;
                }
                out.extend_from_slice(frame);
                pending += 1;
                if pending == 1 {
                    unit_first = head.position;
                }
                if pending >= expected {
                    first = if first == 0 { unit_first } else { first };
                    last = head.position;
                    count += pending;
                    (unit_start, pending, expected, end_offset) = (out.len(), 0, 0, frame_end);
                    if count >= max_records || out.len() as u64 >= max_bytes {
                        full = true;
                        break 'read;
                    }
                }
            }
        }
        let exhausted = !full && !waiting && out.len() == unit_start;
        out.truncate(unit_start); // part of a batch: shipped whole, later
        let frames = PyBytes::new(py, &out);
        Ok(Some((
            frames, first, last, count, end_offset, full, exhausted,
        )))
    })
}

fn walk(data: &[u8], after: u64) -> Result<Option<Vec<Indexed>>, Refusal> {
    let end = data.len() as u64;
    let (mut facts, mut p, mut last, mut owed) = (Vec::new(), 0usize, after, 0u64);
    loop {
        let (body_start, body_end) = match crate::frame::step(data, p, 0, end, true) {
            Step::Frame {
                body_start,
                body_end,
            } => (body_start, body_end),
            Step::Stop(Stop::Clean) => break,
            Step::Stop(Stop::Crc) => return Err(Refusal::Crc),
            Step::Stop(Stop::EndMarker) => return Err(Refusal::NotARecord),
            Step::Stop(Stop::Short | Stop::Length) => return Err(Refusal::InsideFrame),
            Step::More { .. } => unreachable!("a complete buffer never asks for more"),
        };
        let offset = p as u64;
        p = body_end + crate::frame::CRC_SIZE;
        let body = &data[body_start..body_end];
        if body.starts_with(BATCH_PREFIX) {
            if owed > 0 {
                return Err(Refusal::HeaderInBatch);
            }
            let Some((count, first)) = batch_header(body) else {
                return Ok(None);
            };
            if first <= last {
                return Err(Refusal::BatchOrder { first, last });
            }
            owed = count;
        } else if body.starts_with(FACT_PREFIX) {
            let Some(fields) = fact_fields(body) else {
                return Ok(None);
            };
            if fields.position <= last {
                let position = fields.position;
                return Err(Refusal::Order { position, last });
            }
            last = fields.position;
            owed = owed.saturating_sub(1);
            let size = (p as u64) - offset;
            facts.push(Indexed {
                offset,
                size,
                fields,
            });
        } else {
            return Err(Refusal::NotARecord);
        }
    }
    if owed > 0 {
        return Err(Refusal::InsideBatch);
    }
    Ok(Some(facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn fact(position: u64) -> Vec<u8> {
        let body = format!(
            r#"{{"id":"i{position}","store":"s","key":"k","seq":{position},"position":{position},"value":1,"value_hash":"h","transaction_time":1.5,"valid_time":null,"causation":null,"schema_version":1,"producer":null,"derivation":null,"metadata":{{}},"deleted":false}}"#
        );
        frame::encode(body.as_bytes())
    }

    fn batch(count: u64, first: u64) -> Vec<u8> {
        frame::encode(format!(r#"{{"batch":{count},"first":{first}}}"#).as_bytes())
    }

    #[test]
    fn a_shipment_is_indexed_at_its_offsets() {
        let parts = [fact(4), batch(2, 5), fact(5), fact(6)];
        let facts = walk(&parts.concat(), 3).unwrap().unwrap();
        let offsets: Vec<u64> = facts.iter().map(|f| f.offset).collect();
        let header = (parts[0].len() + parts[1].len()) as u64;
        assert_eq!(offsets, [0, header, header + parts[2].len() as u64]);
        assert_eq!(facts[2].size, parts[3].len() as u64);
    }

    #[test]
    fn bad_shipments_are_refused() {
        let data = [fact(1), fact(2)].concat();
        let mut damaged = data.clone();
        *damaged.last_mut().unwrap() ^= 0xFF;
        assert_eq!(walk(&damaged, 0), Err(Refusal::Crc));
        assert_eq!(walk(&data[..data.len() - 3], 0), Err(Refusal::InsideFrame));
        assert_eq!(
            walk(&data, 1),
            Err(Refusal::Order {
                position: 1,
                last: 1
            })
        );
        let open = [batch(3, 1), fact(1), fact(2)].concat();
        assert_eq!(walk(&open, 0), Err(Refusal::InsideBatch));
        let nested = [batch(2, 1), fact(1), batch(1, 2)].concat();
        assert_eq!(walk(&nested, 0), Err(Refusal::HeaderInBatch));
        let file_header = frame::encode(br#"{"file":1,"first_position":1}"#);
        assert_eq!(walk(&file_header, 0), Err(Refusal::NotARecord));
        let spaced = frame::encode(br#"{"id": "a", "store": "s"}"#);
        assert_eq!(walk(&spaced, 0), Ok(None));
    }
}
