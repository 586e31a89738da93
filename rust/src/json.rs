//! JSON text exactly as orjson writes and reads it, without Python: the pieces the
//! Python codec (`py_json`) is built from.
//!
//! Writing: [`write_f64`] (orjson's shortest round-trip float format), [`write_str`]
//! (orjson's escaping: `"`, `\` and the C0 controls; everything else, `/`, DEL, U+2028
//! and non-ASCII included, is written raw) and [`write_i64`] / [`write_u64`].
//!
//! Reading: [`parse`], a strict RFC 8259 parser that accepts and refuses the same texts
//! as `orjson.loads` (UTF-8 only, no BOM, no NaN, no trailing commas, at most 1024
//! nested containers, integers as `i64`/`u64` when they fit and as correctly rounded
//! doubles otherwise, an infinite double refused) and hands every value to a
//! [`Builder`], so that the Python objects are made directly, with no intermediate tree.

/// The deepest nesting of arrays and objects that [`parse`] accepts (orjson's limit).
pub const MAX_PARSE_DEPTH: usize = 1024;

// ---------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------

/// Append `s` (a short piece: a number, a literal).
#[inline(always)]
pub fn append(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len());
    copy_clean(out, s);
}

/// Append `value` in decimal.
#[inline]
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    append(out, itoa::Buffer::new().format(value).as_bytes());
}

/// Append `value` in decimal.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, value: u64) {
    append(out, itoa::Buffer::new().format(value).as_bytes());
}

/// Append a finite double as orjson writes it: the shortest digits that read back as
/// the same double; plain notation with at least one fractional digit when the
/// decimal exponent is in `-5..16` (`100.0`, `0.00001`, `1234567890123456.8`),
/// otherwise `d[.ddd]e±x` with no padding of the exponent (`1e+16`, `1e-7`,
/// `5e-324`); `0.0` and `-0.0` for the zeros.
///
/// That is ryu's layout (same digits, same range of plain notation) except for the `+`
/// orjson writes in a positive exponent.
#[inline]
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    debug_assert!(value.is_finite());
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    match text.iter().position(|&c| c == b'e') {
        Some(e) if text.get(e + 1) != Some(&b'-') => {
            append(out, &text[..=e]);
            out.push(b'+');
            append(out, &text[e + 1..]);
        }
        _ => append(out, text),
    }
}

/// `ESCAPE[b]` is 0 for a byte written as is, `u` for one written as `\u00XX`, else
/// the letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of an 8-byte little-endian word that must be escaped (`"`, `\` or below
/// 0x20), as high bits. Zero exactly when there are none; otherwise the lowest bit set
/// is exact (bits above it may be wrong), so `trailing_zeros() / 8` is the first one.
#[inline(always)]
fn escape_mask(word: u64) -> u64 {
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let control = word & (ONES * 0xe0);
    has_zero(quote) | has_zero(backslash) | has_zero(control)
}

/// The little-endian u64 at `s[at..at + 8]`.
#[inline(always)]
pub(crate) fn load8(s: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The little-endian u32 at `s[at..at + 4]`, widened.
#[inline(always)]
pub(crate) fn load4(s: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&s[at..at + 4]);
    u64::from(u32::from_le_bytes(word))
}

/// The index of the first byte of `s[from..]` that must be escaped, or `s.len()`.
#[inline(always)]
fn next_escape(s: &[u8], from: usize) -> usize {
    let n = s.len();
    let mut i = from;
    while i + 8 <= n {
        let mask = escape_mask(load8(s, i));
        if mask != 0 {
            return i + (mask.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i == n {
        return n;
    }
    // Fewer than 8 bytes are left.
    if n >= 8 && n - 8 >= from {
        // The last 8 bytes: those before `i` are known clean, so shifting them out
        // leaves the lowest bit exact.
        let mask = escape_mask(load8(s, n - 8)) >> (8 * (i + 8 - n));
        return if mask == 0 {
            n
        } else {
            i + (mask.trailing_zeros() / 8) as usize
        };
    }
    // A short run: check it whole (some bytes twice, padded with spaces).
    let r = n - i;
    let word = if r >= 4 {
        load4(s, i) | (load4(s, n - 4) << 32)
    } else {
        0x2020_2020_2020_2020_u64 & !0xff_ffff
            | u64::from(s[i])
            | u64::from(s[i + r / 2]) << 8
            | u64::from(s[n - 1]) << 16
    };
    if escape_mask(word) == 0 {
        return n;
    }
    while i < n && ESCAPE[s[i] as usize] == 0 {
        i += 1;
    }
    i
}

/// Append the escape of byte `b` (one that needs it).
#[cold]
fn write_escape(out: &mut Vec<u8>, b: u8) {
    let escape = ESCAPE[b as usize];
    if escape == b'u' {
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX_DIGITS[(b >> 4) as usize],
            HEX_DIGITS[(b & 0xf) as usize],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', escape]);
    }
}

/// Append `s` with a few word copies instead of a call to `memcpy` (which costs more
/// than the copy for the short pieces JSON is made of): `out` has room for `s`.
#[inline(always)]
fn copy_clean(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    assert!(out.capacity() - out.len() >= n);
    let len = out.len();
    // SAFETY: stores are within `len..len + n`, within the capacity; loads are within
    // `s`; the bytes up to `len + n` are all written.
    unsafe {
        let dst = out.as_mut_ptr().add(len);
        let src = s.as_ptr();
        if n >= 8 {
            let mut i = 0;
            while i + 8 <= n {
                std::ptr::write_unaligned(dst.add(i).cast::<u64>(), load8(s, i));
                i += 8;
            }
            if i < n {
                std::ptr::write_unaligned(dst.add(n - 8).cast::<u64>(), load8(s, n - 8));
            }
        } else if n >= 4 {
            let head = std::ptr::read_unaligned(src.cast::<u32>());
            let tail = std::ptr::read_unaligned(src.add(n - 4).cast::<u32>());
            std::ptr::write_unaligned(dst.cast::<u32>(), head);
            std::ptr::write_unaligned(dst.add(n - 4).cast::<u32>(), tail);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(len + n);
    }
}

/// Append the UTF-8 text `s` as a JSON string, escaped as orjson escapes.
#[inline(always)]
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    out.reserve(n + 2);
    let len = out.len();
    let mut i = 0;
    // The usual case, no escapes, in one pass: words are checked and copied together.
    // SAFETY: loads are within `s`; stores are within `len..len + n + 2`, reserved;
    // `set_len` covers only bytes written.
    unsafe {
        let dst = out.as_mut_ptr().add(len);
        *dst = b'"';
        while i + 8 <= n {
            let word = u64::from_le(std::ptr::read_unaligned(s.as_ptr().add(i).cast::<u64>()));
            if escape_mask(word) != 0 {
                break;
            }
            std::ptr::write_unaligned(dst.add(1 + i).cast::<u64>(), word.to_le());
            i += 8;
        }
        out.set_len(len + 1 + i);
    }
    if i + 8 > n && next_escape(s, i) == n {
        copy_clean(out, &s[i..]);
        out.push(b'"');
        return;
    }
    write_escaped(out, &s[i..]);
}

/// The rest of a string from the first word that has an escape, and the closing quote.
#[cold]
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    loop {
        let i = next_escape(s, start);
        out.reserve(i - start + 8);
        copy_clean(out, &s[start..i]);
        let Some(&b) = s.get(i) else { break };
        write_escape(out, b);
        start = i + 1;
    }
    out.push(b'"');
}

// ---------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------

/// A failure whose details were recorded elsewhere (by the reader or the builder), so
/// that results stay the size of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// Makes the values of a document as [`parse`] reads them, innermost first. A method
/// that fails keeps its own error and returns [`Failed`].
pub trait Builder {
    type Value;

    fn null(&mut self) -> Result<Self::Value, Failed>;
    fn boolean(&mut self, value: bool) -> Result<Self::Value, Failed>;
    fn int(&mut self, value: i64) -> Result<Self::Value, Failed>;
    fn uint(&mut self, value: u64) -> Result<Self::Value, Failed>;
    fn float(&mut self, value: f64) -> Result<Self::Value, Failed>;
    fn string(&mut self, value: &str) -> Result<Self::Value, Failed>;
    /// A key of an object (a builder may reuse equal keys).
    fn key(&mut self, value: &str) -> Result<Self::Value, Failed>;
    /// The array of `items[start..]`, which it drains.
    fn array(&mut self, items: &mut Vec<Self::Value>, start: usize) -> Result<Self::Value, Failed>;
    /// A new empty object.
    fn object(&mut self) -> Result<Self::Value, Failed>;
    /// Set a member of `object` (a later duplicate key replaces the value).
    fn set(
        &mut self,
        object: &Self::Value,
        key: Self::Value,
        value: Self::Value,
    ) -> Result<(), Failed>;
}

/// Why a text is not JSON: orjson's wording and the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: &'static str,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The text is not JSON.
    Syntax(SyntaxError),
    /// The builder failed (it holds the error).
    Build,
}

const END_OF_DATA: &str = "unexpected end of data";
pub const INVALID_UTF8: &str = "str is not valid UTF-8: surrogates not allowed";

/// Buffers a parse reuses; keep one to parse many documents without allocating.
pub struct Scratch<V> {
    /// Items of the open arrays, and the pending key of each open object.
    values: Vec<V>,
    /// The open containers, outermost first (the innermost is in a local).
    frames: Vec<Frame<V>>,
    /// Strings with escapes, unescaped.
    text: Vec<u8>,
}

impl<V> Default for Scratch<V> {
    fn default() -> Self {
        Scratch {
            values: Vec::new(),
            frames: Vec::new(),
            text: Vec::new(),
        }
    }
}

enum Frame<V> {
    Array { start: usize },
    Object { object: V },
}

/// A string of the document: a slice of the input, or unescaped into the scratch.
enum Text {
    Input(usize, usize),
    Unescaped,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    error: Option<SyntaxError>,
}

impl<'a> Reader<'a> {
    #[cold]
    #[inline(never)]
    fn fail(&mut self, message: &'static str, offset: usize) -> Failed {
        self.error = Some(SyntaxError { message, offset });
        Failed
    }

    #[cold]
    #[inline(never)]
    fn end_of_data(&mut self) -> Failed {
        self.fail(END_OF_DATA, self.data.len())
    }

    #[inline(always)]
    fn skip_whitespace(&mut self) {
        while let Some(&c) = self.data.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next byte that is not whitespace (`pos` left on it).
    #[inline(always)]
    fn next_token(&mut self) -> Option<u8> {
        // Most documents written by machines have no whitespace at all.
        match self.data.get(self.pos) {
            Some(&c) if c > b' ' => Some(c),
            _ => {
                self.skip_whitespace();
                self.data.get(self.pos).copied()
            }
        }
    }

    /// The string whose opening quote is at `pos`; `pos` ends after the closing one.
    #[inline(always)]
    fn string(&mut self, text: &mut Vec<u8>) -> Result<Text, Failed> {
        let start = self.pos + 1;
        let i = next_escape(self.data, start);
        match self.data.get(i) {
            Some(b'"') => {
                self.pos = i + 1;
                Ok(Text::Input(start, i))
            }
            _ => self.escaped_string(start, i, text),
        }
    }

    /// The rest of a string from `i`, a backslash, a control character or the end.
    #[cold]
    #[inline(never)]
    fn escaped_string(
        &mut self,
        start: usize,
        mut i: usize,
        text: &mut Vec<u8>,
    ) -> Result<Text, Failed> {
        let data = self.data;
        let quote = start - 1;
        text.clear();
        text.extend_from_slice(&data[start..i]);
        loop {
            let Some(&c) = data.get(i) else {
                return Err(self.end_of_data());
            };
            match c {
                b'"' => {
                    self.pos = i + 1;
                    return Ok(Text::Unescaped);
                }
                b'\\' => {
                    let Some(&e) = data.get(i + 1) else {
                        return Err(self.end_of_data());
                    };
                    let simple = match e {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => 0,
                        _ => return Err(self.fail("invalid escaped sequence in string", quote + 1)),
                    };
                    if e != b'u' {
                        text.push(simple);
                        i += 2;
                        continue;
                    }
                    let unit = self.hex4(i + 2, quote)?;
                    i += 6;
                    let code = if (0xd800..0xdc00).contains(&unit) {
                        if data.get(i) != Some(&b'\\') || data.get(i + 1) != Some(&b'u') {
                            return Err(self.fail("no low surrogate in string", quote + 1));
                        }
                        let low = self.hex4(i + 2, quote)?;
                        if !(0xdc00..0xe000).contains(&low) {
                            return Err(self.fail("no low surrogate in string", quote + 1));
                        }
                        i += 6;
                        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                    } else if (0xdc00..0xe000).contains(&unit) {
                        return Err(self.fail("invalid high surrogate in string", quote + 1));
                    } else {
                        unit
                    };
                    // Never fails: surrogates were handled above.
                    let ch = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => {
                    return Err(self.fail("unexpected control character in string", i));
                }
                _ => {
                    // Copy the run up to the next byte that needs attention.
                    let end = next_escape(data, i);
                    text.extend_from_slice(&data[i..end]);
                    i = end;
                }
            }
        }
    }

    /// The four hex digits at `at` as a number.
    fn hex4(&mut self, at: usize, quote: usize) -> Result<u32, Failed> {
        let data = self.data;
        let Some(digits) = data.get(at..at + 4) else {
            let rest = &data[at.min(data.len())..];
            return Err(if rest.iter().all(u8::is_ascii_hexdigit) {
                self.end_of_data()
            } else {
                self.fail("invalid escaped sequence in string", quote + 1)
            });
        };
        let mut value = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.fail("invalid escaped sequence in string", quote + 1)),
            };
            value = value * 16 + u32::from(v);
        }
        Ok(value)
    }

    /// The number starting at `pos` (a `-` or a digit); `pos` ends after it.
    #[inline(always)]
    fn number<B: Builder>(&mut self, builder: &mut B) -> Result<B::Value, Failed> {
        let data = self.data;
        let start = self.pos;
        let mut i = start;
        let negative = data[i] == b'-';
        if negative {
            i += 1;
        }
        // Up to 19 digits cannot overflow a u64.
        let mut mantissa: u64 = 0;
        let digits_start = i;
        while let Some(&d) = data.get(i) {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            i += 1;
        }
        let digits = i - digits_start;
        if digits == 0 {
            return Err(match data.get(i) {
                None => self.end_of_data(),
                Some(_) => self.fail("no digit after sign", start),
            });
        }
        if digits > 1 && data[digits_start] == b'0' {
            return Err(self.fail("number with leading zero is not allowed", start));
        }
        match data.get(i) {
            Some(b'.' | b'e' | b'E') => {}
            _ if digits <= 19 => {
                self.pos = i;
                return if !negative {
                    if mantissa <= i64::MAX as u64 {
                        builder.int(mantissa as i64)
                    } else {
                        builder.uint(mantissa)
                    }
                } else if mantissa <= 1u64 << 63 {
                    builder.int((mantissa as i64).wrapping_neg())
                } else {
                    self.float_at(start, i, builder)
                };
            }
            _ => {
                // 20 digits or more: a u64 (<= 18446744073709551615) or a double.
                self.pos = i;
                if !negative && digits == 20 {
                    if let Ok(value) = std::str::from_utf8(&data[start..i])
                        .unwrap_or("")
                        .parse::<u64>()
                    {
                        return builder.uint(value);
                    }
                }
                return self.float_at(start, i, builder);
            }
        }
        // A fraction and/or an exponent: a double. Digits go on into the mantissa as
        // long as it stays exact, for Clinger's fast path.
        let mut exact = digits <= 19;
        let mut scale: i64 = 0;
        if data[i] == b'.' {
            i += 1;
            let fraction_start = i;
            while let Some(&d) = data.get(i) {
                let digit = d.wrapping_sub(b'0');
                if digit > 9 {
                    break;
                }
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
                i += 1;
            }
            let fraction = i - fraction_start;
            if fraction == 0 {
                return Err(match data.get(i) {
                    None => self.end_of_data(),
                    Some(_) => self.fail("no digit after decimal point", start),
                });
            }
            exact &= digits + fraction <= 19;
            scale = -(fraction as i64);
        }
        if matches!(data.get(i), Some(b'e' | b'E')) {
            i += 1;
            let mut exponent_negative = false;
            match data.get(i) {
                Some(b'-') => {
                    exponent_negative = true;
                    i += 1;
                }
                Some(b'+') => i += 1,
                _ => {}
            }
            let exponent_start = i;
            let mut exponent: i64 = 0;
            while let Some(&d) = data.get(i) {
                let digit = d.wrapping_sub(b'0');
                if digit > 9 {
                    break;
                }
                // Saturates far beyond any double's range.
                exponent = (exponent * 10 + i64::from(digit)).min(1 << 32);
                i += 1;
            }
            if i == exponent_start {
                return Err(match data.get(i) {
                    None => self.end_of_data(),
                    Some(_) => self.fail("no digit after exponent sign", start),
                });
            }
            scale += if exponent_negative {
                -exponent
            } else {
                exponent
            };
        }
        self.pos = i;
        // Clinger: an exact mantissa and an exact power of ten make one correctly
        // rounded operation.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        if exact && mantissa <= 1 << 53 && (-22..=22).contains(&scale) {
            let m = mantissa as f64;
            let value = if scale < 0 {
                m / POW10[(-scale) as usize]
            } else {
                m * POW10[scale as usize]
            };
            return builder.float(if negative { -value } else { value });
        }
        self.float_at(start, i, builder)
    }

    /// The double of the number text `data[start..end]`, correctly rounded.
    #[inline(never)]
    fn float_at<B: Builder>(
        &mut self,
        start: usize,
        end: usize,
        builder: &mut B,
    ) -> Result<B::Value, Failed> {
        // The slice is ASCII: it is all signs, digits, '.' and 'e'.
        let text = std::str::from_utf8(&self.data[start..end]).unwrap_or("");
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => builder.float(value),
            Ok(_) => Err(self.fail("number is infinity when parsed as double", start)),
            Err(_) => Err(self.fail("invalid number", start)),
        }
    }

    /// `true`, `false` or `null` at `pos`.
    #[inline(always)]
    fn literal<B: Builder>(&mut self, builder: &mut B) -> Result<B::Value, Failed> {
        let data = self.data;
        let (word, value): (&[u8], Option<bool>) = match data[self.pos] {
            b't' => (b"true", Some(true)),
            b'f' => (b"false", Some(false)),
            _ => (b"null", None),
        };
        let end = self.pos + word.len();
        if data.get(self.pos..end) == Some(word) {
            self.pos = end;
            return match value {
                Some(value) => builder.boolean(value),
                None => builder.null(),
            };
        }
        let available = &data[self.pos..data.len().min(end)];
        if word.starts_with(available) {
            return Err(self.end_of_data());
        }
        Err(self.fail("invalid literal", self.pos))
    }

    /// The key at `pos` (a quote), its colon and the whitespace after it.
    #[inline(always)]
    fn key<B: Builder>(&mut self, builder: &mut B, text: &mut Vec<u8>) -> Result<B::Value, Failed> {
        let data = self.data;
        let key = match self.string(text)? {
            Text::Input(start, end) => {
                // SAFETY: `data` is valid UTF-8 (checked in `parse`) and the slice is
                // cut at ASCII quotes.
                builder.key(unsafe { std::str::from_utf8_unchecked(&data[start..end]) })?
            }
            Text::Unescaped => match std::str::from_utf8(text) {
                Ok(s) => builder.key(s)?,
                Err(_) => return Err(self.fail(INVALID_UTF8, self.pos)),
            },
        };
        match self.next_token() {
            Some(b':') => {}
            None => return Err(self.end_of_data()),
            Some(_) => {
                return Err(self.fail("unexpected character, expected ':' after key", self.pos))
            }
        }
        self.pos += 1;
        Ok(key)
    }

    /// The first key of an object or the next one after a comma, at the next token.
    #[inline(always)]
    fn next_key<B: Builder>(
        &mut self,
        builder: &mut B,
        text: &mut Vec<u8>,
    ) -> Result<B::Value, Failed> {
        match self.next_token() {
            Some(b'"') => self.key(builder, text),
            None => Err(self.end_of_data()),
            Some(_) => Err(self.fail("unexpected character, expected a string key", self.pos)),
        }
    }

    /// A string value at `pos`.
    #[inline(always)]
    fn string_value<B: Builder>(
        &mut self,
        builder: &mut B,
        text: &mut Vec<u8>,
    ) -> Result<B::Value, Failed> {
        let data = self.data;
        match self.string(text)? {
            // SAFETY: as for keys.
            Text::Input(start, end) => {
                builder.string(unsafe { std::str::from_utf8_unchecked(&data[start..end]) })
            }
            Text::Unescaped => match std::str::from_utf8(text) {
                Ok(s) => builder.string(s),
                Err(_) => Err(self.fail(INVALID_UTF8, self.pos)),
            },
        }
    }
}

/// Parse the JSON document `data` the way `orjson.loads` does, making its values with
/// `builder`.
pub fn parse<B: Builder>(
    data: &[u8],
    builder: &mut B,
    scratch: &mut Scratch<B::Value>,
) -> Result<B::Value, ParseError> {
    let syntax = |message, offset| Err(ParseError::Syntax(SyntaxError { message, offset }));
    if data.is_empty() {
        return syntax("Input is a zero-length, empty document", 0);
    }
    if data.starts_with(b"\xef\xbb\xbf") {
        return syntax("UTF-8 byte order mark (BOM) is not supported", 0);
    }
    if std::str::from_utf8(data).is_err() {
        return syntax(INVALID_UTF8, 0);
    }
    let mut reader = Reader {
        data,
        pos: 0,
        error: None,
    };
    reader.skip_whitespace();
    if reader.pos == data.len() {
        return syntax("input data is empty", 0);
    }
    scratch.values.clear();
    scratch.frames.clear();
    let result = parse_document(&mut reader, builder, scratch);
    // On error, whatever was built so far is dropped here.
    scratch.values.clear();
    scratch.frames.clear();
    result.map_err(|Failed| match reader.error.take() {
        Some(err) => ParseError::Syntax(err),
        None => ParseError::Build,
    })
}

/// The value starting at `pos`, if it is not a container (`Ok(None)` then).
#[inline(always)]
fn scalar<B: Builder>(
    reader: &mut Reader<'_>,
    c: u8,
    builder: &mut B,
    text: &mut Vec<u8>,
) -> Result<Option<B::Value>, Failed> {
    Ok(Some(match c {
        b'"' => reader.string_value(builder, text)?,
        b'-' | b'0'..=b'9' => reader.number(builder)?,
        b't' | b'f' | b'n' => reader.literal(builder)?,
        b'[' | b'{' => return Ok(None),
        _ => {
            return Err(reader.fail("unexpected character, expected a JSON value", reader.pos));
        }
    }))
}

fn parse_document<B: Builder>(
    reader: &mut Reader<'_>,
    builder: &mut B,
    scratch: &mut Scratch<B::Value>,
) -> Result<B::Value, Failed> {
    let Scratch {
        values,
        frames,
        text,
    } = scratch;
    let mut c = reader.data[reader.pos];
    let value = match scalar(reader, c, builder, text)? {
        Some(value) => value,
        None => 'document: loop {
            // A container opens at `pos` (`c` is `[` or `{`).
            if frames.len() >= MAX_PARSE_DEPTH {
                return Err(reader.fail("depth limit exceeded", reader.pos));
            }
            reader.pos += 1;
            let mut value = if c == b'[' {
                if reader.next_token() == Some(b']') {
                    reader.pos += 1;
                    let start = values.len();
                    builder.array(values, start)?
                } else {
                    frames.push(Frame::Array {
                        start: values.len(),
                    });
                    // The first item.
                    let Some(next) = reader.next_token() else {
                        return Err(reader.end_of_data());
                    };
                    match scalar(reader, next, builder, text)? {
                        Some(item) => item,
                        None => {
                            c = next;
                            continue 'document;
                        }
                    }
                }
            } else {
                let object = builder.object()?;
                if reader.next_token() == Some(b'}') {
                    reader.pos += 1;
                    object
                } else {
                    let key = reader.next_key(builder, text)?;
                    frames.push(Frame::Object { object });
                    values.push(key);
                    let Some(next) = reader.next_token() else {
                        return Err(reader.end_of_data());
                    };
                    match scalar(reader, next, builder, text)? {
                        Some(member) => member,
                        None => {
                            c = next;
                            continue 'document;
                        }
                    }
                }
            };
            // `value` is complete: place it in the innermost container and carry on
            // with that container's next value, closing containers as they end.
            loop {
                match frames.last() {
                    None => break 'document value,
                    Some(Frame::Array { start }) => {
                        values.push(value);
                        match reader.next_token() {
                            Some(b',') => {
                                let comma = reader.pos;
                                reader.pos += 1;
                                let Some(next) = reader.next_token() else {
                                    return Err(reader.end_of_data());
                                };
                                if next == b']' {
                                    return Err(reader.fail("trailing comma is not allowed", comma));
                                }
                                match scalar(reader, next, builder, text)? {
                                    Some(item) => value = item,
                                    None => {
                                        c = next;
                                        continue 'document;
                                    }
                                }
                            }
                            Some(b']') => {
                                reader.pos += 1;
                                let start = *start;
                                frames.pop();
                                value = builder.array(values, start)?;
                            }
                            None => return Err(reader.end_of_data()),
                            Some(_) => {
                                return Err(reader.fail(
                                    "unexpected character, expected ',' or ']'",
                                    reader.pos,
                                ));
                            }
                        }
                    }
                    Some(Frame::Object { object }) => {
                        // The pending key is on top of `values`.
                        let Some(key) = values.pop() else {
                            unreachable!("an open object has a pending key")
                        };
                        builder.set(object, key, value)?;
                        match reader.next_token() {
                            Some(b',') => {
                                let comma = reader.pos;
                                reader.pos += 1;
                                if reader.next_token() == Some(b'}') {
                                    return Err(reader.fail("trailing comma is not allowed", comma));
                                }
                                values.push(reader.next_key(builder, text)?);
                                let Some(next) = reader.next_token() else {
                                    return Err(reader.end_of_data());
                                };
                                match scalar(reader, next, builder, text)? {
                                    Some(member) => value = member,
                                    None => {
                                        c = next;
                                        continue 'document;
                                    }
                                }
                            }
                            Some(b'}') => {
                                reader.pos += 1;
                                match frames.pop() {
                                    Some(Frame::Object { object }) => value = object,
                                    _ => unreachable!("the top frame is this object"),
                                }
                            }
                            None => return Err(reader.end_of_data()),
                            Some(_) => {
                                return Err(reader.fail(
                                    "unexpected character, expected ',' or '}'",
                                    reader.pos,
                                ));
                            }
                        }
                    }
                }
            }
        },
    };
    if reader.next_token().is_some() {
        drop(value);
        return Err(reader.fail("unexpected content after document", reader.pos));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(value: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    fn string(value: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, value.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_as_orjson_writes_them() {
        // Expected values are orjson 3.13's output.
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-2.0, "-2.0"),
            (100.0, "100.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.8, "1234567890123456.8"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1e21, "1e+21"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (-1.5e300, "-1.5e+300"),
            (1e-5, "0.00001"),
            (1.5e-5, "0.000015"),
            (1.2345678901234568e-5, "0.000012345678901234568"),
            (1e-4, "0.0001"),
            (1e-6, "1e-6"),
            (1e-7, "1e-7"),
            (2.5e-8, "2.5e-8"),
            (1.23e-18, "1.23e-18"),
            (1.5e-100, "1.5e-100"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1700000000.123456, "1700000000.123456"),
            (9007199254740992.0, "9007199254740992.0"),
            (12345678901234.566, "12345678901234.566"),
        ];
        for &(value, expected) in cases {
            assert_eq!(float(value), expected, "{value:e}");
        }
    }

    #[test]
    fn floats_read_back_exactly() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = f64::from_bits(x);
            if !value.is_finite() {
                continue;
            }
            let text = float(value);
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                value.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn strings_escaped_as_orjson_escapes_them() {
        assert_eq!(string(""), r#""""#);
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(string("\u{8}\t\n\u{c}\r"), r#""\b\t\n\f\r""#);
        assert_eq!(
            string("\u{0}\u{1}\u{b}\u{1f}"),
            r#""\u0000\u0001\u000b\u001f""#
        );
        assert_eq!(
            string("\u{7f}\u{2028}\u{2029}é😀"),
            "\"\u{7f}\u{2028}\u{2029}é😀\""
        );
    }

    /// Escaping one byte at a time, as the reference for the word-at-a-time writer.
    fn naive_escape(s: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x09 => out.extend_from_slice(b"\\t"),
                0x0a => out.extend_from_slice(b"\\n"),
                0x0c => out.extend_from_slice(b"\\f"),
                0x0d => out.extend_from_slice(b"\\r"),
                0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn escaping_matches_the_byte_at_a_time_reference() {
        // Every length up to 40, escapes at every position, other bytes on both sides of
        // the ASCII range, and an output buffer that already holds something.
        let alphabet = b"ab\"\\\x00\x1f\x1e\x7f\x80\xe9 /\n\t";
        let mut x = 7u64;
        for len in 0..40 {
            for _ in 0..300 {
                let s: Vec<u8> = (0..len)
                    .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize])
                    .collect();
                let mut out = b"prefix".to_vec();
                write_str(&mut out, &s);
                assert_eq!(&out[6..], &naive_escape(&s)[..], "{s:?}");
            }
        }
        for b in 0..=255u8 {
            for len in [1, 7, 8, 9, 16, 17] {
                let mut s = vec![b'x'; len];
                s[len - 1] = b;
                let mut out = Vec::new();
                write_str(&mut out, &s);
                assert_eq!(out, naive_escape(&s));
            }
        }
    }

    #[test]
    fn fast_float_parsing_is_correctly_rounded() {
        let mut x = 11u64;
        for _ in 0..200_000 {
            let digits = 1 + xorshift(&mut x) % 19;
            let mantissa = xorshift(&mut x) % 10u64.pow(digits as u32);
            let point = xorshift(&mut x) % (digits + 1);
            let mut text = mantissa.to_string();
            while text.len() < point as usize + 1 {
                text.insert(0, '0');
            }
            let at = text.len() - point as usize;
            text.insert(at, '.');
            if text.ends_with('.') {
                text.push('0');
            }
            if xorshift(&mut x) % 3 == 0 {
                text = format!("{text}e{}", (xorshift(&mut x) % 50) as i64 - 25);
            }
            if xorshift(&mut x) % 2 == 0 {
                text.insert(0, '-');
            }
            let expected: f64 = text.parse().unwrap();
            match parsed(text.as_bytes()) {
                Ok(Value::Float(value)) => {
                    assert_eq!(value.to_bits(), expected.to_bits(), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        write_i64(&mut out, i64::MIN);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, b"-9223372036854775808 18446744073709551615");
    }

    /// A plain Rust tree, to test the parser without Python.
    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Null,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Str(String),
        Array(Vec<Value>),
        Object(std::rc::Rc<std::cell::RefCell<Vec<(Value, Value)>>>),
    }

    struct Tree;

    impl Builder for Tree {
        type Value = Value;
        fn null(&mut self) -> Result<Value, Failed> {
            Ok(Value::Null)
        }
        fn boolean(&mut self, value: bool) -> Result<Value, Failed> {
            Ok(Value::Bool(value))
        }
        fn int(&mut self, value: i64) -> Result<Value, Failed> {
            Ok(Value::Int(value))
        }
        fn uint(&mut self, value: u64) -> Result<Value, Failed> {
            Ok(Value::UInt(value))
        }
        fn float(&mut self, value: f64) -> Result<Value, Failed> {
            Ok(Value::Float(value))
        }
        fn string(&mut self, value: &str) -> Result<Value, Failed> {
            Ok(Value::Str(value.to_owned()))
        }
        fn key(&mut self, value: &str) -> Result<Value, Failed> {
            Ok(Value::Str(value.to_owned()))
        }
        fn array(&mut self, items: &mut Vec<Value>, start: usize) -> Result<Value, Failed> {
            Ok(Value::Array(items.drain(start..).collect()))
        }
        fn object(&mut self) -> Result<Value, Failed> {
            Ok(Value::Object(Default::default()))
        }
        fn set(&mut self, object: &Value, key: Value, value: Value) -> Result<(), Failed> {
            let Value::Object(members) = object else {
                return Err(Failed);
            };
            let mut members = members.borrow_mut();
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
            Ok(())
        }
    }

    fn parsed(text: &[u8]) -> Result<Value, SyntaxError> {
        match parse(text, &mut Tree, &mut Scratch::default()) {
            Ok(value) => Ok(value),
            Err(ParseError::Syntax(err)) => Err(err),
            Err(ParseError::Build) => panic!("builder failed"),
        }
    }

    fn error(text: &[u8]) -> &'static str {
        parsed(text).expect_err("should not parse").message
    }

    fn object(members: Vec<(&str, Value)>) -> Value {
        Value::Object(std::rc::Rc::new(std::cell::RefCell::new(
            members
                .into_iter()
                .map(|(k, v)| (Value::Str(k.to_owned()), v))
                .collect(),
        )))
    }

    #[test]
    fn parses_values() {
        use Value::*;
        assert_eq!(parsed(b" \t\r\nnull\n"), Ok(Null));
        assert_eq!(
            parsed(b"[true,false]"),
            Ok(Array(vec![Bool(true), Bool(false)]))
        );
        assert_eq!(parsed(b"-0"), Ok(Int(0)));
        assert_eq!(
            parsed(b"-0.0").map(|v| format!("{v:?}")),
            Ok("Float(-0.0)".into())
        );
        assert_eq!(parsed(b"18446744073709551615"), Ok(UInt(u64::MAX)));
        assert_eq!(parsed(b"9223372036854775807"), Ok(Int(i64::MAX)));
        assert_eq!(parsed(b"-9223372036854775808"), Ok(Int(i64::MIN)));
        assert_eq!(
            parsed(b"18446744073709551616"),
            Ok(Float(18446744073709551616.0))
        );
        assert_eq!(
            parsed(b"-9223372036854775809"),
            Ok(Float(-9223372036854775809.0))
        );
        assert_eq!(parsed(b"1E+2"), Ok(Float(100.0)));
        assert_eq!(parsed(b"1e-400"), Ok(Float(0.0)));
        assert_eq!(parsed(b"4.9e-324"), Ok(Float(5e-324)));
        assert_eq!(
            parsed(br#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00z""#),
            Ok(Str("a\"\\/\u{8}\u{c}\n\r\té😀z".into()))
        );
        assert_eq!(parsed("\"\u{7f}é\"".as_bytes()), Ok(Str("\u{7f}é".into())));
        assert_eq!(
            parsed(br#"{"a":1,"b":[],"a":{}}"#),
            Ok(object(vec![("a", object(vec![])), ("b", Array(vec![]))]))
        );
    }

    #[test]
    fn refuses_what_orjson_refuses() {
        for (text, message) in [
            (&b""[..], "Input is a zero-length, empty document"),
            (b" ", "input data is empty"),
            (
                b"\xef\xbb\xbf1",
                "UTF-8 byte order mark (BOM) is not supported",
            ),
            (b"\"\xff\"", INVALID_UTF8),
            (b"\"\xed\xa0\x80\"", INVALID_UTF8),
            (b"1E400", "number is infinity when parsed as double"),
            (b"-1e400", "number is infinity when parsed as double"),
            (
                b"1.7976931348623159e308",
                "number is infinity when parsed as double",
            ),
            (b"01", "number with leading zero is not allowed"),
            (b"1.", END_OF_DATA),
            (b"1.e3", "no digit after decimal point"),
            (b"1e", END_OF_DATA),
            (b"-", END_OF_DATA),
            (b"+1", "unexpected character, expected a JSON value"),
            (b"\x0c1", "unexpected character, expected a JSON value"),
            (b"NaN", "unexpected character, expected a JSON value"),
            (br#""\ud800""#, "no low surrogate in string"),
            (br#""\ud800\u0041""#, "no low surrogate in string"),
            (br#""\udc00""#, "invalid high surrogate in string"),
            (br#""\x""#, "invalid escaped sequence in string"),
            (br#""\u004G""#, "invalid escaped sequence in string"),
            (b"\"\x1f\"", "unexpected control character in string"),
            (b"\"abc", END_OF_DATA),
            (b"[1,]", "trailing comma is not allowed"),
            (br#"{"a":1,}"#, "trailing comma is not allowed"),
            (b"{1:2}", "unexpected character, expected a string key"),
            (br#"{"a"}"#, "unexpected character, expected ':' after key"),
            (b"[1 2]", "unexpected character, expected ',' or ']'"),
            (b"[", END_OF_DATA),
            (b"nul", END_OF_DATA),
            (b"nulx", "invalid literal"),
            (b"1 2", "unexpected content after document"),
            (b"[]]", "unexpected content after document"),
            (b"1\x00", "unexpected content after document"),
        ] {
            assert_eq!(error(text), message, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn depth_limit() {
        let n = MAX_PARSE_DEPTH;
        let ok = [b"[".repeat(n), b"]".repeat(n)].concat();
        assert!(parsed(&ok).is_ok());
        let deep = [b"[".repeat(n + 1), b"]".repeat(n + 1)].concat();
        assert_eq!(error(&deep), "depth limit exceeded");
        let objects = [br#"{"a":"#.repeat(n + 1), b"1".to_vec(), b"}".repeat(n + 1)].concat();
        assert_eq!(error(&objects), "depth limit exceeded");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet = b"[]{}\",:\\u0123456789abcdefABCDEF.eE+- \t\ntrueflsn\xc3\xa9\xff\x00";
        let mut x: u64 = 1;
        for _ in 0..50_000 {
            let mut text = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = parsed(&text);
        }
    }
}
