//! The frame: the one framing KilnDB uses on disk and on the wire.
//!
//! ```text
//! offset  size  field
//! 0       4     body_len   u32, big-endian: length of body in bytes
//! 4       n     body       the body bytes (UTF-8 JSON, or a hint column)
//! 4+n     4     crc        u32, big-endian: zlib/IEEE CRC-32 of the body bytes only
//! ```
//!
//! A frame is `8 + body_len` bytes, byte-compatible with Igniter's `WireProtocol`. The
//! CRC covers the body, not the length: a damaged length shows up as a CRC mismatch (or
//! an oversize frame) at that offset. In a preallocated data file a header whose
//! `body_len` is 0 marks the end of the data (no record body is ever empty).

pub const HEADER_SIZE: usize = 4;
pub const CRC_SIZE: usize = 4;
pub const OVERHEAD: usize = HEADER_SIZE + CRC_SIZE;

/// CRC-32 (zlib, IEEE polynomial) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Append the frame of `body` to `out`.
pub fn encode_into(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + OVERHEAD);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(body).to_be_bytes());
}

pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + OVERHEAD);
    encode_into(body, &mut out);
    out
}

/// The big-endian u32 at `at` (the caller checked that four bytes are there).
#[inline]
pub fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(word)
}

/// Why a sequential reading of frames stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The end of the range was reached exactly at a frame boundary.
    Clean,
    /// A zero length: the end-of-data marker of a preallocated file.
    EndMarker,
    /// Fewer bytes are left than the frame at this offset needs (a torn write).
    Short,
    /// The frame's length runs past the end of the range.
    Length,
    /// The frame's CRC does not match its body.
    Crc,
}

impl Stop {
    /// The name `kilndb.storage.datafile.FrameReader.stop_reason` uses.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Stop::Clean => None,
            Stop::EndMarker => Some("end-marker"),
            Stop::Short => Some("short"),
            Stop::Length => Some("length"),
            Stop::Crc => Some("crc"),
        }
    }
}

/// One step of reading `buf`, which holds the bytes of a file from `base` on, for a
/// range that ends at `end` (an absolute offset).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A complete, intact frame: its body is `buf[body_start..body_end]`.
    Frame { body_start: usize, body_end: usize },
    /// Reading stops here for good.
    Stop(Stop),
    /// `buf` ends before the frame does: at least `need` bytes from `p` are required.
    More { need: usize },
}

/// Look at the frame starting at `buf[p]` (file offset `base + p`).
///
/// `complete` says that `buf` already holds every byte of the range that exists, so
/// a frame cut short by the end of `buf` is a torn one, not one to read more of.
#[inline]
pub fn step(buf: &[u8], p: usize, base: u64, end: u64, complete: bool) -> Step {
    let offset = base + p as u64;
    if offset >= end {
        return Step::Stop(Stop::Clean);
    }
    let available = buf.len() - p;
    if available < HEADER_SIZE {
        return if complete {
            Step::Stop(Stop::Short)
        } else {
            Step::More { need: HEADER_SIZE }
        };
    }
    let length = read_u32(buf, p) as usize;
    if length == 0 {
        return Step::Stop(Stop::EndMarker);
    }
    if offset + (OVERHEAD + length) as u64 > end {
        return Step::Stop(Stop::Length);
    }
    if available < OVERHEAD + length {
        return if complete {
            Step::Stop(Stop::Short)
        } else {
            Step::More {
                need: OVERHEAD + length,
            }
        };
    }
    let body_start = p + HEADER_SIZE;
    let body_end = body_start + length;
    if crc32(&buf[body_start..body_end]) != read_u32(buf, body_end) {
        return Step::Stop(Stop::Crc);
    }
    Step::Frame {
        body_start,
        body_end,
    }
}

/// Why a stream decoder refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    TooLarge { size: u64, limit: u64 },
    Crc,
}

/// Incremental decoder of a byte stream of frames (sans-I/O): bytes are fed in, whole
/// bodies come out. After a CRC mismatch the stream has lost its framing and stays
/// failed. An oversize frame fails it too, unless the decoder skips oversize frames:
/// then the frame is refused once (`TooLarge`) and its body and CRC — exactly the
/// announced length plus four bytes — are discarded as they arrive, never buffered, so
/// the frames after it decode as usual.
#[derive(Debug)]
pub struct StreamDecoder {
    buffer: Vec<u8>,
    start: usize,
    pub max_frame_bytes: u64,
    pub failed: Option<StreamError>,
    /// Refuse an oversize frame and skip it, rather than failing the stream.
    pub skip_oversize: bool,
    /// Bytes of a refused frame still to be discarded.
    skipping: u64,
}

impl StreamDecoder {
    pub fn new(max_frame_bytes: u64) -> Self {
        StreamDecoder {
            buffer: Vec::new(),
            start: 0,
            max_frame_bytes,
            failed: None,
            skip_oversize: false,
            skipping: 0,
        }
    }

    /// A decoder that skips oversize frames (see the type's docs).
    pub fn skipping_oversize(max_frame_bytes: u64) -> Self {
        StreamDecoder {
            skip_oversize: true,
            ..StreamDecoder::new(max_frame_bytes)
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        if self.skipping > 0 && self.buffer.is_empty() {
            // The body of a refused frame: dropped here, never copied.
            let n = self.skipping.min(data.len() as u64);
            self.skipping -= n;
            data = &data[n as usize..];
        }
        self.buffer.extend_from_slice(data);
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Bytes of a refused frame still to be discarded (0 unless one is being skipped).
    pub fn skipping(&self) -> u64 {
        self.skipping
    }

    /// Discard what is buffered of a refused frame; false while more of it is to come.
    fn discard(&mut self) -> bool {
        let n = self.skipping.min(self.buffered() as u64);
        self.start += n as usize;
        self.skipping -= n;
        self.skipping == 0
    }

    /// The next complete body as a range of the internal buffer, `Ok(None)` when more
    /// bytes are needed. The range is valid until the next call.
    pub fn next_range(&mut self) -> Result<Option<(usize, usize)>, StreamError> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        if self.skipping > 0 && !self.discard() {
            self.compact();
            return Ok(None);
        }
        let available = self.buffer.len() - self.start;
        if available < HEADER_SIZE {
            self.compact();
            return Ok(None);
        }
        let length = read_u32(&self.buffer, self.start) as u64;
        if length > self.max_frame_bytes {
            let refused = StreamError::TooLarge {
                size: length,
                limit: self.max_frame_bytes,
            };
            if self.skip_oversize {
                self.start += HEADER_SIZE;
                self.skipping = length + CRC_SIZE as u64;
                self.discard();
                self.compact();
            } else {
                self.failed = Some(refused);
            }
            return Err(refused);
        }
        let total = OVERHEAD + length as usize;
        if available < total {
            self.compact();
            return Ok(None);
        }
        let body_start = self.start + HEADER_SIZE;
        let body_end = body_start + length as usize;
        if crc32(&self.buffer[body_start..body_end]) != read_u32(&self.buffer, body_end) {
            self.failed = Some(StreamError::Crc);
            return Err(StreamError::Crc);
        }
        self.start += total;
        Ok(Some((body_start, body_end)))
    }

    pub fn bytes(&self, range: (usize, usize)) -> &[u8] {
        &self.buffer[range.0..range.1]
    }

    fn compact(&mut self) {
        // Consumed bytes are dropped only when waiting for more, so a run of small
        // frames in one feed costs one move, not one per frame.
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn encode_layout() {
        let frame = encode(b"{\"op\":\"ping\"}");
        assert_eq!(&frame[..4], &13u32.to_be_bytes());
        assert_eq!(&frame[4..17], b"{\"op\":\"ping\"}");
        assert_eq!(&frame[17..], &crc32(b"{\"op\":\"ping\"}").to_be_bytes());
    }

    #[test]
    fn step_reads_frames_and_stops() {
        let mut buf = encode(b"one");
        buf.extend(encode(b"three"));
        let end = buf.len() as u64;
        match step(&buf, 0, 0, end, true) {
            Step::Frame {
                body_start,
                body_end,
            } => assert_eq!(&buf[body_start..body_end], b"one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            step(&buf, 11, 0, end, true),
            Step::Frame {
                body_start: 15,
                body_end: 20
            }
        );
        assert_eq!(step(&buf, 24, 0, end, true), Step::Stop(Stop::Clean));
        // A range cut inside the second frame: its length runs past the end.
        assert_eq!(step(&buf, 11, 0, end - 1, true), Step::Stop(Stop::Length));
        // The buffer holds less than the range: read more, or torn if that was all.
        assert_eq!(step(&buf[..20], 11, 0, end, false), Step::More { need: 13 });
        assert_eq!(step(&buf[..20], 11, 0, end, true), Step::Stop(Stop::Short));
        let mut zeros = buf.clone();
        zeros.extend([0u8; 8]);
        assert_eq!(step(&zeros, 24, 0, 32, true), Step::Stop(Stop::EndMarker));
        buf[16] ^= 1;
        assert_eq!(step(&buf, 11, 0, end, true), Step::Stop(Stop::Crc));
    }

    #[test]
    fn decoder_any_split_gives_the_same_frames() {
        let mut stream = Vec::new();
        let bodies: Vec<Vec<u8>> = (1..40).map(|n| vec![b'x'; n * 7]).collect();
        for body in &bodies {
            encode_into(body, &mut stream);
        }
        for chunk in [1usize, 3, 8, 100, stream.len()] {
            let mut decoder = StreamDecoder::new(1 << 20);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.feed(piece);
                while let Some(range) = decoder.next_range().expect("valid stream") {
                    out.push(decoder.bytes(range).to_vec());
                }
            }
            assert_eq!(out, bodies);
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn decoder_refuses_oversize_and_crc() {
        let mut decoder = StreamDecoder::new(4);
        decoder.feed(&encode(b"hello"));
        assert_eq!(
            decoder.next_range(),
            Err(StreamError::TooLarge { size: 5, limit: 4 })
        );
        // It stays failed.
        assert!(decoder.next_range().is_err());
        let mut frame = encode(b"hello");
        frame[5] ^= 0xFF;
        let mut decoder = StreamDecoder::new(1024);
        decoder.feed(&frame);
        assert_eq!(decoder.next_range(), Err(StreamError::Crc));
    }

    /// Decode `stream` fed `chunk` bytes at a time with a skipping decoder: each body,
    /// or None for a refused frame.
    fn decode_skipping(stream: &[u8], limit: u64, chunk: usize) -> Vec<Option<Vec<u8>>> {
        let mut decoder = StreamDecoder::skipping_oversize(limit);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.feed(piece);
            loop {
                match decoder.next_range() {
                    Ok(Some(range)) => out.push(Some(decoder.bytes(range).to_vec())),
                    Ok(None) => break,
                    Err(StreamError::TooLarge { size, limit: l }) => {
                        assert_eq!(l, limit);
                        assert!(size > limit);
                        out.push(None);
                    }
                    Err(err) => panic!("unexpected {err:?}"),
                }
            }
        }
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.skipping(), 0);
        out
    }

    #[test]
    fn skipping_decoder_refuses_oversize_frames_and_stays_in_step() {
        let big = vec![b'x'; 100];
        let mut stream = Vec::new();
        for body in [&b"one"[..], &big, b"two", &big, &big, b"three"] {
            encode_into(body, &mut stream);
        }
        let expected = vec![
            Some(b"one".to_vec()),
            None,
            Some(b"two".to_vec()),
            None,
            None,
            Some(b"three".to_vec()),
        ];
        for chunk in [1usize, 3, 4, 7, 8, 50, 104, 108, stream.len()] {
            assert_eq!(
                decode_skipping(&stream, 16, chunk),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn skipped_bytes_are_never_buffered() {
        let mut decoder = StreamDecoder::skipping_oversize(16);
        decoder.feed(&(1000u32).to_be_bytes());
        assert!(matches!(
            decoder.next_range(),
            Err(StreamError::TooLarge {
                size: 1000,
                limit: 16
            })
        ));
        assert_eq!(decoder.skipping(), 1004);
        decoder.feed(&[0u8; 600]);
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.skipping(), 404);
        let mut rest = vec![0u8; 404];
        rest.extend_from_slice(&encode(b"after"));
        decoder.feed(&rest);
        let range = decoder.next_range().expect("in step").expect("a frame");
        assert_eq!(decoder.bytes(range), b"after");
        // The refusal is not sticky, and a CRC mismatch still fails the stream.
        let mut frame = encode(b"hello");
        frame[5] ^= 0xFF;
        decoder.feed(&frame);
        assert_eq!(decoder.next_range(), Err(StreamError::Crc));
        assert_eq!(decoder.next_range(), Err(StreamError::Crc));
    }
}
