//! Generated-input properties (proptest) for every parser that reads outside input: routes,
//! names and globs, config, control file, templates, JSON fields and rendering, and the
//! credentials-socket address. They run in `cargo test` at proptest's default case count;
//! `scripts/fuzz-long.sh N` runs N cases per property (`PROPTEST_CASES`).
//!
//! This module only tests: it holds no production code, and each property states what the parser
//! must guarantee for *any* input, not just the examples in the modules' own table tests.

mod config;
mod control;
mod creds;
mod jsonval;
mod name;
mod route;
mod template;

use proptest::prelude::*;

/// A source name as `validate_source_name` accepts it.
pub fn source_name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,12}"
}

/// One id segment: id bytes other than `/`, never `.` or `..`.
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_+=.@:-]{1,10}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

/// An id as `validate_id` accepts it: one to four segments joined by `/`.
pub fn secret_id() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..5).prop_map(|segs| segs.join("/"))
}

/// Text biased towards the characters a parser treats specially, plus arbitrary unicode.
pub fn hostile_text(specials: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(specials).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "[a-z/.]{0,4}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}
