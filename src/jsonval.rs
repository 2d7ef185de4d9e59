//! JSON over secret bytes without unlocked copies: extracting one top-level field of a secret
//! (`?field=`) and rendering the `Accept: application/json` response, both into secure memory.
//!
//! Parsing borrows: serde_json reads the object with its values as borrowed raw slices of the
//! locked input, and string values are unescaped here straight into a [`SecretBuf`]. Errors carry
//! no input text (serde_json's messages can quote values), only a kind.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::secure_mem::{MemError, SecretBuf, SecretBytes};

/// Why a field could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// The secret is not a JSON object.
    #[error("the secret is not a JSON object")]
    NotObject,
    /// No such top-level key.
    #[error("no such field")]
    Missing,
    /// Secure memory failure.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// The value of top-level `field`: a string's unescaped text, or any other value's JSON text.
pub fn extract_field(json: &[u8], field: &str) -> Result<SecretBytes, FieldError> {
    let map: BTreeMap<String, &RawValue> =
        serde_json::from_slice(json).map_err(|_| FieldError::NotObject)?;
    let raw = map.get(field).ok_or(FieldError::Missing)?.get().as_bytes();
    if raw.first() == Some(&b'"') {
        let mut out = SecretBuf::with_capacity(raw.len())?;
        unescape_string(raw, &mut out)?.ok_or(FieldError::NotObject)?;
        Ok(out.finish()?)
    } else {
        Ok(SecretBytes::from_slice(raw)?)
    }
}

/// Unescapes a JSON string literal (quotes included) into `out`: `Ok(None)` when the literal is
/// malformed, `Err` when secure memory cannot hold it (so a budget refusal is not reported as a
/// malformed value).
fn unescape_string(lit: &[u8], out: &mut SecretBuf) -> Result<Option<()>, MemError> {
    macro_rules! syntax {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    let mut rest = syntax!(lit.strip_prefix(b"\"").and_then(|b| b.strip_suffix(b"\"")));
    // Slices, not indices: no arithmetic on positions.
    loop {
        let plain = rest.iter().position(|&b| b == b'\\').unwrap_or(rest.len());
        let (text, tail) = rest.split_at(plain);
        out.extend_from_slice(text)?;
        // `tail` is empty or starts with the backslash.
        let Some((_, tail)) = tail.split_first() else {
            break;
        };
        let (&esc, tail) = syntax!(tail.split_first());
        rest = tail;
        let simple = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Ok(None),
        };
        if let Some(b) = simple {
            out.extend_from_slice(&[b])?;
            continue;
        }
        let (digits, tail) = syntax!(rest.split_at_checked(4));
        let hi = syntax!(hex4(digits));
        rest = tail;
        let code = if (0xD800..0xDC00).contains(&hi) {
            let tail = syntax!(rest.strip_prefix(b"\\u"));
            let (digits, tail) = syntax!(tail.split_at_checked(4));
            let lo = syntax!(hex4(digits));
            rest = tail;
            if !(0xDC00..0xE000).contains(&lo) {
                return Ok(None);
            }
            // 10 bits each from hi and lo: 0x10000 plus at most 0xFFFFF.
            syntax!(0x10000u32.checked_add(((hi & 0x3FF) << 10) | (lo & 0x3FF)))
        } else {
            hi
        };
        let ch = syntax!(char::from_u32(code));
        let mut utf8 = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes())?;
    }
    Ok(Some(()))
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Appends `text` as a JSON string literal (with quotes).
pub fn push_json_string(out: &mut SecretBuf, text: &str) -> Result<(), MemError> {
    out.extend_from_slice(b"\"")?;
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i])?;
        match esc {
            Some(e) => out.extend_from_slice(e)?,
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ])?;
            }
        }
        // `i` indexes `bytes`, so `i + 1 <= bytes.len()`.
        start = i.saturating_add(1);
    }
    out.extend_from_slice(&bytes[start..])?;
    out.extend_from_slice(b"\"")
}

/// Appends standard base64 of `bytes` (for binary values in JSON responses).
///
/// Not the `base64` crate (in the lock file): it encodes into a `String` or plain slice, and the
/// encoded value is as secret as the value, so it is written into the locked buffer directly.
pub fn push_base64(out: &mut SecretBuf, bytes: &[u8]) -> Result<(), MemError> {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let quad = [
            TABLE[(n >> 18) as usize & 63],
            TABLE[(n >> 12) as usize & 63],
            if chunk.len() > 1 {
                TABLE[(n >> 6) as usize & 63]
            } else {
                b'='
            },
            if chunk.len() > 2 {
                TABLE[n as usize & 63]
            } else {
                b'='
            },
        ];
        out.extend_from_slice(&quad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str, key: &str) -> Result<Vec<u8>, String> {
        extract_field(json.as_bytes(), key)
            .map(|s| s.as_slice().to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn extract_table() {
        let doc = r#"{"user":"app","password":"p\"a\\s\ns\u00e9\ud83d\ude00","port":5432,"tls":true,"nested":{"a":1},"list":[1,2]}"#;
        assert_eq!(field(doc, "user").unwrap(), b"app");
        assert_eq!(field(doc, "password").unwrap(), "p\"a\\s\nsé😀".as_bytes());
        assert_eq!(field(doc, "port").unwrap(), b"5432");
        assert_eq!(field(doc, "tls").unwrap(), b"true");
        assert_eq!(field(doc, "nested").unwrap(), br#"{"a":1}"#);
        assert_eq!(field(doc, "list").unwrap(), b"[1,2]");
        assert!(matches!(
            extract_field(doc.as_bytes(), "nope"),
            Err(FieldError::Missing)
        ));
        assert!(matches!(
            extract_field(b"plain text", "x"),
            Err(FieldError::NotObject)
        ));
        assert!(matches!(
            extract_field(b"[1,2]", "x"),
            Err(FieldError::NotObject)
        ));
        assert!(matches!(
            extract_field(b"\"str\"", "x"),
            Err(FieldError::NotObject)
        ));
    }

    #[test]
    fn render_string_and_base64() {
        let mut out = SecretBuf::with_capacity(8).unwrap();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}e").unwrap();
        assert_eq!(out.as_slice(), br#""a\"b\\c\nd\u0001e""#);
        let back: String = serde_json::from_slice(out.as_slice()).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}e");
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\xff\x00\xfe", "/wD+"),
        ] {
            let mut out = SecretBuf::with_capacity(8).unwrap();
            push_base64(&mut out, input).unwrap();
            assert_eq!(out.as_slice(), want.as_bytes());
        }
    }
}
