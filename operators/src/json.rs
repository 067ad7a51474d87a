//! Small, fast JSON writing helpers for the output path (snapshots, dead letters).
//!
//! Output is plain UTF-8 JSON: strings are escaped the way `serde_json` does (`"`, `\`, and
//! control characters; everything else is written as is), so the bytes are the same whichever
//! code path wrote them.

use crate::event::AttrValue;

/// Appends `s` as a JSON string literal (with quotes).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
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
