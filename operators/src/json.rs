//! Small, fast JSON writing helpers for the output path (snapshots, dead letters).
//!
//! Output is plain UTF-8 JSON: strings are escaped the way `serde_json` does (`"`, `\`, and
//! control characters; everything else is written as is), so the bytes are the same whichever
//! code path wrote them.

use crate::event::AttrValue;

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

/// Strings up to this long take [`write_str`]'s short path (bytes).
const SHORT: usize = 32;

/// Appends `s` as a JSON string literal (with quotes).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if bytes.len() <= SHORT {
        // Most strings (ids, names, attribute keys and values) are short: the literal is put
        // together in a stack buffer padded with a byte that needs no escape, checked whole
        // words at a time (no byte-by-byte tail), and appended with one copy.
        let mut buf = [b'a'; SHORT + 16];
        buf[8..8 + bytes.len()].copy_from_slice(bytes);
        let mut special = 0;
        for w in buf[8..8 + bytes.len().div_ceil(8) * 8].chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            special |= special_bytes(u64::from_le_bytes(word));
        }
        if special == 0 {
            buf[7] = b'"';
            buf[8 + bytes.len()] = b'"';
            out.extend_from_slice(&buf[7..9 + bytes.len()]);
            return;
        }
    }
    write_str_escaped(out, s);
}

/// [`write_str`] of any string: checks it word by word, escapes what needs it.
fn write_str_escaped(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    // Check 8 bytes at a time for a byte to escape: ids, names and most values then cost a
    // few word operations and one copy.
    let clean = first_special(bytes).unwrap_or(bytes.len());
    if clean == bytes.len() {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends an integer.
pub fn write_int<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Appends a JSON number as written by `serde_json` (integers as integers, floats shortest).
pub fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        write_int(out, u);
    } else if let Some(i) = n.as_i64() {
        write_int(out, i);
    } else {
        // Finite by validation; serde_json prints floats with ryu (e.g. `1.5`, `1e21`).
        out.extend_from_slice(n.to_string().as_bytes());
    }
}

/// Appends an attribute value.
pub fn write_attr(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => write_str(out, s),
        AttrValue::Num(n) => write_number(out, n),
        AttrValue::Bool(true) => out.extend_from_slice(b"true"),
        AttrValue::Bool(false) => out.extend_from_slice(b"false"),
        AttrValue::Null => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_serde_json_at_every_length_and_position() {
        // Both paths of `write_str` (short: up to `SHORT` bytes) and their boundary.
        for len in 0..=SHORT + 9 {
            for special in ["\"", "\\", "\n", "\u{1}", "é"] {
                for pos in 0..=len {
                    let s = format!("{}{special}{}", "x".repeat(pos), "y".repeat(len - pos));
                    let mut out = Vec::new();
                    write_str(&mut out, &s);
                    assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
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
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
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
