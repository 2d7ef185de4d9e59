//! Names and globs: validation never panics and means what it says, and the glob matcher agrees
//! with a plain dynamic-programming reference matcher on every pattern and name.

use proptest::prelude::*;

use super::{hostile_text, secret_id, source_name};
use crate::name::{Glob, MAX_ID_LEN, NameError, SecretName, validate_id};

/// Reference semantics: `*` any run (slashes included), `?` one byte, the rest literal.
/// `m[i][j]`: the first `i` pattern bytes match the first `j` name bytes.
fn reference_match(pattern: &[u8], name: &[u8]) -> bool {
    let mut m = vec![vec![false; name.len() + 1]; pattern.len() + 1];
    m[0][0] = true;
    for i in 1..=pattern.len() {
        for j in 0..=name.len() {
            m[i][j] = match pattern[i - 1] {
                b'*' => m[i - 1][j] || (j > 0 && m[i][j - 1]),
                b'?' => j > 0 && m[i - 1][j - 1],
                c => j > 0 && name[j - 1] == c && m[i - 1][j - 1],
            };
        }
    }
    m[pattern.len()][name.len()]
}

proptest! {
    #[test]
    fn glob_agrees_with_the_reference_matcher(
        // A small alphabet, so that patterns and names collide often.
        pattern in "[ab/*?]{1,12}",
        name in "[ab/]{0,16}",
    ) {
        let glob = Glob::parse(&pattern).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = reference_match(pattern.as_bytes(), name.as_bytes());
        prop_assert_eq!(glob.matches(&name), want, "{} ~ {}", pattern, name);
        if let Some((source, id)) = name.split_once('/') {
            prop_assert_eq!(glob.matches_parts(source, id), want, "{} ~ parts {}", pattern, name);
        }
    }

    #[test]
    fn a_glob_without_wildcards_matches_exactly_its_own_text(
        source in source_name(),
        id in secret_id(),
        other in secret_id(),
    ) {
        let full = format!("{source}/{id}");
        let glob = Glob::parse(&full).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(glob.matches(&full));
        prop_assert!(glob.matches_parts(&source, &id));
        prop_assert_eq!(glob.matches_parts(&source, &other), other == id);
    }

    #[test]
    fn a_glob_only_accepts_characters_a_name_can_have(pattern in hostile_text(&["*", "?", "a", "/", " ", "%"])) {
        if Glob::parse(&pattern).is_ok() {
            prop_assert!(!pattern.is_empty());
            prop_assert!(pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:*?".contains(&b)));
        }
    }

    #[test]
    fn an_accepted_id_has_no_traversal_and_no_foreign_bytes(
        id in hostile_text(&["/", ".", "..", "a", "%2F", "\0", ":", "@", "-"]),
    ) {
        match validate_id(&id) {
            Ok(()) => {
                prop_assert!(id.len() <= MAX_ID_LEN);
                prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b)));
                prop_assert!(id.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
            }
            Err(NameError::Empty) => prop_assert!(id.is_empty()),
            Err(_) => {}
        }
    }

    #[test]
    fn a_name_round_trips_through_its_display_form(source in source_name(), id in secret_id()) {
        let name = SecretName::new(&source, &id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(SecretName::parse(&name.to_string()), Ok(name));
    }
}
