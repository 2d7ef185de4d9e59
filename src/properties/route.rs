//! Route parser: no request head makes it panic, whatever it accepts is a valid name, and a name
//! survives percent-encoding of any of its bytes.

use hyper::{HeaderMap, Method, Uri};
use proptest::prelude::*;

use super::{hostile_text, secret_id, source_name};
use crate::name::{validate_id, validate_source_name};
use crate::server::route::{Route, percent_decode};

/// `%XX` for every byte where `mask` says so (and always for bytes a URI path cannot hold).
fn encode(text: &str, mask: &[bool]) -> String {
    text.bytes()
        .enumerate()
        .map(|(i, b)| {
            let must = !(b.is_ascii_alphanumeric() || b"/_+=.@:-".contains(&b));
            if must || mask.get(i % mask.len().max(1)).copied().unwrap_or(false) {
                format!("%{b:02X}")
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

const SPECIALS: &[&str] = &[
    "/v1/secrets/",
    "/v1/health",
    "/v1/cache/flush",
    "/v1/metrics",
    "%",
    "%2",
    "%2F",
    "%2f",
    "%00",
    "%ff",
    "%C3%A9",
    "..",
    "/",
    "//",
    "?",
    "&",
    "=",
    "field=",
    "version=",
    "version_stage=",
    "version_id=",
    "files/",
    "#",
    "*",
];

proptest! {
    #[test]
    fn any_request_head_never_panics_and_only_valid_names_pass(
        path in hostile_text(SPECIALS),
        method in prop::sample::select(vec![Method::GET, Method::HEAD, Method::POST, Method::PUT]),
        accept in hostile_text(&["application/json", ",", ";", "q=0.9", "text/html", " "]),
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(value) = accept.parse() {
            headers.insert(hyper::header::ACCEPT, value);
        }
        if let Ok(uri) = path.parse::<Uri>()
            && let Ok(Route::Secret(read)) = Route::parse(&method, &uri, &headers)
        {
            let (name, field) = (read.secret.name, read.field);
            prop_assert!(validate_source_name(name.source()).is_ok());
            prop_assert!(validate_id(name.id()).is_ok());
            if let Some(field) = field {
                prop_assert!(!field.is_empty() && field.len() <= 256);
                prop_assert!(!field.chars().any(char::is_control));
            }
        }
        let _ = percent_decode(&path);
    }

    #[test]
    fn a_secret_name_round_trips_through_percent_encoding(
        source in source_name(),
        id in secret_id(),
        mask in prop::collection::vec(any::<bool>(), 1..8),
        field in prop::option::of("[^\\p{Cc}]{1,40}"),
        json in any::<bool>(),
    ) {
        let mut uri = format!("/v1/secrets/{}/{}", encode(&source, &mask), encode(&id, &mask));
        if let Some(field) = &field {
            uri.push_str("?field=");
            uri.push_str(&encode(field, &[true]));
        }
        let uri: Uri = uri.parse().map_err(|e| TestCaseError::fail(format!("{uri}: {e}")))?;
        let mut headers = HeaderMap::new();
        if json {
            headers.insert(hyper::header::ACCEPT, hyper::header::HeaderValue::from_static("application/json"));
        }
        let route = Route::parse(&Method::GET, &uri, &headers);
        let Ok(Route::Secret(read)) = route else {
            return Err(TestCaseError::fail(format!("{uri}: {route:?}")));
        };
        let (name, got_field, format) = (read.secret.name, read.field, read.format);
        prop_assert_eq!(name.source(), source.as_str());
        prop_assert_eq!(name.id(), id.as_str());
        prop_assert_eq!(got_field, field);
        prop_assert_eq!(format == crate::broker::Format::Json, json);
    }

    #[test]
    fn percent_decode_inverts_full_encoding(text in any::<String>()) {
        prop_assert_eq!(percent_decode(&encode(&text, &[true])).ok().map(|t| t.into_owned()), Some(text));
    }
}
