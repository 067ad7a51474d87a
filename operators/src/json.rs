//! Small, fast JSON writing helpers for the output path (snapshots, dead letters).
//!
//! Output is plain UTF-8 JSON: strings are escaped the way `serde_json` does (`"`, `\`, and
//! control characters; everything else is written as is), so the bytes are the same whichever
//! code path wrote them.

use crate::event::AttrValue;

/// Where JSON is written: a byte buffer, or a `String`. Everything written is a `&str` or an
/// ASCII byte, so a `String` is filled without ever checking its bytes as UTF-8 (a snapshot is
/// built in the session's `String` arena and handed out as is).
pub trait JsonOut {
    /// Appends `s`.
    fn put(&mut self, s: &str);
    /// Appends the ASCII byte `b` (`b < 0x80`).
    fn put_ascii(&mut self, b: u8);
    /// Reserves room for `n` more bytes.
    fn reserve_bytes(&mut self, n: usize);
}

impl JsonOut for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    #[inline]
    fn put_ascii(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        self.push(b);
    }
    #[inline]
    fn reserve_bytes(&mut self, n: usize) {
        self.reserve(n);
    }
}

impl JsonOut for String {
    #[inline]
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    #[inline]
    fn put_ascii(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        self.push(char::from(b));
    }
    #[inline]
    fn reserve_bytes(&mut self, n: usize) {
        self.reserve(n);
    }
}

/// The bytes of the little-endian word `w` that end a plain JSON string run: a control byte
/// (`< 0x20`), `"` or `\\`, as the high bit of each such byte. The classic "has a zero byte"
/// bit trick: a borrow can only flag a byte above a byte that really matches, so the mask is
/// non-zero exactly when some byte matches, and its lowest set bit marks the first match.
pub(crate) fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b & HIGH;
    control | quote | backslash
}

/// The index of the first byte of `bytes` that is a control byte, `"` or `\\`, if any:
/// 8 bytes at a time, then byte by byte for the last few.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let m = special_bytes(u64::from_le_bytes(word));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

/// Appends `s` as a JSON string literal (with quotes).
#[inline]
pub fn write_str<O: JsonOut + ?Sized>(out: &mut O, s: &str) {
    out.put_ascii(b'"');
    write_str_content(out, s);
    out.put_ascii(b'"');
}

/// Appends the inside of `s`'s JSON string literal (escaped, without the quotes), for writers
/// that put the quotes into the literal text around it (`{"id":"` .. `","ts":`).
pub fn write_str_content<O: JsonOut + ?Sized>(out: &mut O, s: &str) {
    // Most strings (ids, names, attribute keys and values) need no escape: checked 8 bytes at
    // a time, then appended as they are.
    match first_special(s.as_bytes()) {
        None => out.put(s),
        Some(clean) => write_escaped(out, s, clean),
    }
}

/// [`write_str_content`] of a string whose first byte to escape is at `clean`: the bytes
/// before it as they are, then each byte escaped as it needs.
fn write_escaped<O: JsonOut + ?Sized>(out: &mut O, s: &str, clean: usize) {
    let bytes = s.as_bytes();
    out.reserve_bytes(s.len() + 8);
    // Every byte escaped is ASCII, so `start` and `i` are character boundaries of `s`.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => {
                out.put(&s[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put("\\u00");
                out.put_ascii(HEX[(b >> 4) as usize]);
                out.put_ascii(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.put(&s[start..i]);
        out.put(esc);
        start = i + 1;
    }
    out.put(&s[start..]);
}

/// Appends an integer.
pub fn write_int<O: JsonOut + ?Sized, I: itoa::Integer>(out: &mut O, v: I) {
    let mut buf = itoa::Buffer::new();
    out.put(buf.format(v));
}

/// Appends a JSON number as written by `serde_json` (integers as integers, floats shortest).
pub fn write_number<O: JsonOut + ?Sized>(out: &mut O, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        write_int(out, u);
    } else if let Some(i) = n.as_i64() {
        write_int(out, i);
    } else {
        // Finite by validation; serde_json prints floats with ryu (e.g. `1.5`, `1e21`).
        out.put(&n.to_string());
    }
}

/// Appends `key":value` of an object member whose opening quote the caller wrote (as the end
/// of its `{"` or `,"`), with a string value's quotes in the same literal text.
pub fn write_attr_member<O: JsonOut + ?Sized>(out: &mut O, key: &str, v: &AttrValue) {
    write_str_content(out, key);
    if let AttrValue::Str(s) = v {
        out.put("\":\"");
        write_str_content(out, s);
        out.put_ascii(b'"');
    } else {
        out.put("\":");
        write_attr(out, v);
    }
}

/// Appends an attribute value.
pub fn write_attr<O: JsonOut + ?Sized>(out: &mut O, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => write_str(out, s),
        AttrValue::Num(n) => write_number(out, n),
        AttrValue::Bool(true) => out.put("true"),
        AttrValue::Bool(false) => out.put("false"),
        AttrValue::Null => out.put("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_serde_json_at_every_length_and_position() {
        // Lengths over several 8-byte words, the special byte in every word and in the tail.
        for len in 0..=41 {
            for special in ["\"", "\\", "\n", "\u{1}", "é"] {
                for pos in 0..=len {
                    let s = format!("{}{special}{}", "x".repeat(pos), "y".repeat(len - pos));
                    let mut out = Vec::new();
                    write_str(&mut out, &s);
                    let want = serde_json::to_string(&s).unwrap();
                    assert_eq!(String::from_utf8(out).unwrap(), want);
                    let mut text = String::new();
                    write_str(&mut text, &s);
                    assert_eq!(text, want);
                }
            }
        }
    }

    #[test]
    fn strings_escape_like_serde_json() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n\r\t",
            "\u{1}\u{1f}x",
            "é✓😀",
            "",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap());
        }
    }

    proptest::proptest! {
        /// The word-at-a-time search finds the first special byte, wherever it is and
        /// whatever is around it (bytes that borrow, UTF-8, more special bytes after it).
        #[test]
        fn first_special_is_the_first_special_byte(bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::Just(b'"'), proptest::prelude::Just(b'\\'), 0u8..0x20,
                0x20u8..=0xff, b'a'..=b'z',
            ],
            0..40,
        )) {
            let want = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            proptest::prop_assert_eq!(first_special(&bytes), want);
        }
    }

    #[test]
    fn the_word_check_finds_every_byte_to_escape() {
        for b in 0u8..=255 {
            let must = b < 0x20 || b == b'"' || b == b'\\';
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = b;
                assert_eq!(special_bytes(u64::from_le_bytes(w)) != 0, must, "byte {b:#x} at {pos}");
                // Next to bytes that flag or borrow.
                let mut w = [0xffu8; 8];
                w[pos] = b;
                assert_eq!(
                    special_bytes(u64::from_le_bytes(w)) != 0,
                    must,
                    "byte {b:#x} at {pos} among 0xff"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_escapes_like_serde_json(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            let want = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), want.clone());
            // The same literal written into a `String` (how snapshots are built).
            let mut text = String::from("x");
            write_str(&mut text, &s);
            proptest::prop_assert_eq!(text, format!("x{want}"));
        }
    }

    #[test]
    fn numbers_keep_their_kind() {
        for text in ["0", "18446744073709551615", "-5", "1.5", "1e21", "-0.25"] {
            let n: serde_json::Number = serde_json::from_str(text).unwrap();
            let mut out = Vec::new();
            write_number(&mut out, &n);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&n).unwrap());
        }
    }
}
