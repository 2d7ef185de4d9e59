//! JSON over secret bytes: field extraction agrees with `serde_json` on any object (however its
//! strings are escaped), never panics on any bytes, and rendering round-trips through `serde_json`.

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::jsonval::{FieldError, extract_field, push_base64, push_json_string};
use crate::secure_mem::SecretBuf;

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON string literal with every non-ASCII or special character as `\uXXXX` (surrogate pairs
/// above the BMP), so extraction's own unescaping is exercised, not just serde_json's output.
fn escaped_literal(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == ' ' {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
    }
    out.push('"');
    out
}

/// Standard base64 decoding, written plainly as the reference for `push_base64`.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for quad in text.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in quad {
            let v = if c == b'=' {
                0
            } else {
                TABLE.iter().position(|&t| t == c)? as u32
            };
            n = (n << 6) | v;
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{\"a\":", b"\"", b"\\u", b"\\ud83d", b"\\ude00", b"\\", b"}", b",", b"[",
];

proptest! {
    #[test]
    fn extracted_fields_agree_with_serde_json(
        object in prop::collection::btree_map(any::<String>(), json_value(), 1..6),
        probe in any::<String>(),
    ) {
        let doc = serde_json::to_vec(&Value::Object(object.clone().into_iter().collect::<Map<_, _>>()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Compared with serde_json's own reading of the same text (its float parsing may differ
        // from the generated f64 in the last bit).
        let parsed: Map<String, Value> =
            serde_json::from_slice(&doc).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (key, value) in &parsed {
            let got = extract_field(&doc, key).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match value {
                Value::String(s) => prop_assert_eq!(got.as_slice(), s.as_bytes()),
                other => {
                    let back: Value = serde_json::from_slice(got.as_slice())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&back, other);
                }
            }
        }
        if !parsed.contains_key(&probe) {
            prop_assert!(matches!(extract_field(&doc, &probe), Err(FieldError::Missing)));
        }
    }

    #[test]
    fn unicode_escapes_unescape_to_the_original_text(key in "[a-z]{1,8}", value in any::<String>()) {
        let doc = format!("{{{}:{}}}", escaped_literal(&key), escaped_literal(&value));
        let got = extract_field(doc.as_bytes(), &key).map_err(|e| TestCaseError::fail(format!("{doc}: {e}")))?;
        prop_assert_eq!(got.as_slice(), value.as_bytes());
    }

    #[test]
    fn any_bytes_never_panic_and_never_grow(
        bytes in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(JSON_TOKENS).prop_map(<[u8]>::to_vec),
                1 => prop::collection::vec(any::<u8>(), 0..4),
            ],
            0..30,
        ),
    ) {
        let input = bytes.concat();
        if let Ok(value) = extract_field(&input, "a") {
            prop_assert!(value.len() <= input.len());
        }
    }

    #[test]
    fn rendered_strings_round_trip_through_serde_json(text in any::<String>()) {
        let mut out = SecretBuf::with_capacity(text.len() + 2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        push_json_string(&mut out, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: String = serde_json::from_slice(out.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, text);
    }

    #[test]
    fn base64_decodes_back_to_the_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut out = SecretBuf::with_capacity(8).map_err(|e| TestCaseError::fail(e.to_string()))?;
        push_base64(&mut out, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.len(), bytes.len().div_ceil(3) * 4);
        prop_assert_eq!(base64_decode(out.as_slice()), Some(bytes));
    }
}
