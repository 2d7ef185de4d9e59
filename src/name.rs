//! Secret names and the glob patterns that select them.
//!
//! A secret is addressed as `{source}/{id}`. This module validates both halves (before any source
//! is asked) and matches glob patterns over the full name. It does no I/O and knows nothing of
//! sources or peers.

use std::fmt;
use std::sync::Arc;

/// Longest accepted id: an ARN with a long name fits well within it.
pub const MAX_ID_LEN: usize = 2048;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty source or id.
    #[error("secret id is empty")]
    Empty,
    /// Longer than [`MAX_ID_LEN`].
    #[error("secret id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// A character outside the allowed set.
    #[error("secret id contains a character outside letters, digits and /_+=.@-:")]
    BadChar,
    /// A `.` or `..` segment, or an empty segment (`//`, leading or trailing `/`).
    #[error("secret id contains an empty, '.' or '..' path segment")]
    BadSegment,
    /// A source name outside `[a-z0-9_-]`.
    #[error("source name must be lower-case letters, digits, '-' or '_'")]
    BadSource,
}

/// A validated secret name: source plus id, held as one shared `SOURCE/ID` string (one
/// allocation per name: every read parses one, and its audit line and a cache miss share it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretName {
    /// `SOURCE/ID`. A source name has no `/`, so equal strings are equal names.
    joined: Arc<str>,
    /// The length of `SOURCE`: `joined[split]` is the `/`.
    split: usize,
}

impl SecretName {
    /// Validates a source name and an id (already percent-decoded).
    pub fn new(source: &str, id: &str) -> Result<Self, NameError> {
        validate_source_name(source)?;
        validate_id(id)?;
        let mut joined =
            String::with_capacity(source.len().saturating_add(id.len()).saturating_add(1));
        joined.push_str(source);
        joined.push('/');
        joined.push_str(id);
        Ok(SecretName {
            joined: Arc::from(joined),
            split: source.len(),
        })
    }

    /// Parses `source/id` as given on the command line, in a control file or in a request path
    /// (already percent-decoded): the name is the first `/`'s two sides, validated as by
    /// [`SecretName::new`].
    pub fn parse(full: &str) -> Result<Self, NameError> {
        let slash = full
            .bytes()
            .position(|b| b == b'/')
            .ok_or(NameError::Empty)?;
        let (source, id) = (
            full.get(..slash).unwrap_or_default(),
            full.get(slash.saturating_add(1)..).unwrap_or_default(),
        );
        validate_source_name(source)?;
        validate_id(id)?;
        Ok(SecretName {
            joined: Arc::from(full),
            split: source.len(),
        })
    }

    /// The source name.
    pub fn source(&self) -> &str {
        self.joined.get(..self.split).unwrap_or_default()
    }

    /// The id within the source.
    pub fn id(&self) -> &str {
        self.joined
            .get(self.split.saturating_add(1)..)
            .unwrap_or_default()
    }

    /// `SOURCE/ID`, as `Display` writes it, shared (every read puts it in its audit line).
    pub fn joined(&self) -> Arc<str> {
        Arc::clone(&self.joined)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretName")
            .field("source", &self.source())
            .field("id", &self.id())
            .finish()
    }
}

/// Names order by source, then id (as a `(source, id)` pair would; `SOURCE/ID` strings would put
/// `a-b/x` before `a/x`).
impl Ord for SecretName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.source(), self.id()).cmp(&(other.source(), other.id()))
    }
}

impl PartialOrd for SecretName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined)
    }
}

/// Checks a source name: `[a-z0-9_-]+`, at most 64 bytes.
pub fn validate_source_name(source: &str) -> Result<(), NameError> {
    if source.is_empty() {
        return Err(NameError::Empty);
    }
    if source.len() > 64
        || !source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(NameError::BadSource);
    }
    Ok(())
}

/// Checks an id against Secrets Manager's character rules plus `:` (ARNs), and rejects path
/// segments that could walk out of a directory.
pub fn validate_id(id: &str) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(NameError::TooLong);
    }
    if !id.bytes().all(is_id_byte) {
        return Err(NameError::BadChar);
    }
    // SECURITY: no traversal, and no ambiguous spellings of one name ("a//b", "a/./b", "a/").
    // (Bytes, not `str::split`: a char searcher's set-up cost more than these short scans.)
    if id
        .as_bytes()
        .split(|&b| b == b'/')
        .any(|seg| seg.is_empty() || seg == b"." || seg == b"..")
    {
        return Err(NameError::BadSegment);
    }
    Ok(())
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'=' | b'.' | b'@' | b'-' | b':')
}

/// A glob over full secret names: `*` matches any run of characters (slashes included), `?` one
/// character; everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// `Some(n)` when the pattern is `n` literal bytes and one final `*` (`files/app/*`, the
    /// common kind): every read is matched against the rules, and a prefix compare is a
    /// fraction of the general match.
    prefix: Option<usize>,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// Empty pattern.
    #[error("pattern is empty")]
    Empty,
    /// Characters that can never match a secret name.
    #[error("pattern contains a character that no secret name has")]
    BadChar,
}

impl Glob {
    /// Parses a pattern such as `files/app/*`.
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if !pattern
            .bytes()
            .all(|b| is_id_byte(b) || b == b'*' || b == b'?')
        {
            return Err(GlobError::BadChar);
        }
        let literal = pattern.len().saturating_sub(1);
        let prefix = pattern
            .strip_suffix('*')
            .filter(|head| !head.bytes().any(|b| b == b'*' || b == b'?'))
            .map(|_| literal);
        Ok(Glob {
            pattern: pattern.to_owned(),
            prefix,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` (as `source/id`) matches.
    pub fn matches(&self, name: &str) -> bool {
        if let Some(head) = self.literal_head() {
            return name.as_bytes().starts_with(head);
        }
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }

    /// Whether `source` and `id` joined by `/` match, without allocating.
    pub fn matches_parts(&self, source: &str, id: &str) -> bool {
        if let Some(head) = self.literal_head() {
            let (source, id) = (source.as_bytes(), id.as_bytes());
            return match (head.get(..source.len()), head.get(source.len()..)) {
                // The head covers the source: then `/`, then a prefix of the id.
                (Some(head_source), Some(after)) => {
                    head_source == source
                        && after.split_first().is_none_or(|(&slash, head_id)| {
                            slash == b'/' && id.starts_with(head_id)
                        })
                }
                // The head ends inside the source.
                _ => source.starts_with(head),
            };
        }
        glob_match(
            self.pattern.as_bytes(),
            Joined(source.as_bytes(), id.as_bytes()),
        )
    }

    /// The literal bytes before the one final `*` of a prefix pattern.
    fn literal_head(&self) -> Option<&[u8]> {
        self.prefix.and_then(|n| self.pattern.as_bytes().get(..n))
    }
}

/// The bytes being matched: one slice, or `a` + `/` + `b` without building it.
trait Subject: Copy {
    fn len(self) -> usize;
    fn at(self, i: usize) -> u8;
}

impl Subject for &[u8] {
    fn len(self) -> usize {
        <[u8]>::len(self)
    }
    fn at(self, i: usize) -> u8 {
        self[i]
    }
}

#[derive(Clone, Copy)]
struct Joined<'a>(&'a [u8], &'a [u8]);

impl Subject for Joined<'_> {
    fn len(self) -> usize {
        self.0.len() + 1 + self.1.len()
    }
    fn at(self, i: usize) -> u8 {
        match i.cmp(&self.0.len()) {
            std::cmp::Ordering::Less => self.0[i],
            std::cmp::Ordering::Equal => b'/',
            std::cmp::Ordering::Greater => self.1[i - self.0.len() - 1],
        }
    }
}

/// Iterative wildcard match with single-star backtracking: O(len(p) * len(s)) worst case.
fn glob_match(p: &[u8], s: impl Subject) -> bool {
    glob_match_counted(p, s).0
}

/// [`glob_match`], also returning the number of steps taken, so a test can hold the matcher
/// to its O(len(p) * len(s)) bound without timing it.
fn glob_match_counted(p: &[u8], s: impl Subject) -> (bool, usize) {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0;
    while si < s.len() {
        steps += 1;
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s.at(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return (false, steps),
            },
        }
    }
    (p[pi..].iter().all(|&c| c == b'*'), steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix pattern's fast match agrees with the general match, whatever the split of the
    /// name into source and id.
    #[test]
    fn a_prefix_pattern_matches_as_the_general_match_does() {
        let patterns = [
            "*",
            "f*",
            "files*",
            "files/*",
            "files/a*",
            "files/ab/*",
            "fil*",
            "x/*",
        ];
        let names = [
            "files/a",
            "files/ab/c",
            "files/b",
            "fil/x",
            "f/a",
            "files-2/a",
            "x/y",
        ];
        for pattern in patterns {
            let glob = Glob::parse(pattern).unwrap();
            assert!(glob.prefix.is_some(), "{pattern} is a prefix pattern");
            for name in names {
                let (source, id) = name.split_once('/').unwrap();
                let general = glob_match(pattern.as_bytes(), name.as_bytes());
                assert_eq!(glob.matches(name), general, "{pattern} vs {name}");
                assert_eq!(
                    glob.matches_parts(source, id),
                    general,
                    "{pattern} vs {name} (parts)"
                );
            }
        }
        assert!(Glob::parse("files/*/x").unwrap().prefix.is_none());
        assert!(Glob::parse("f?les/*").unwrap().prefix.is_none());
    }

    #[test]
    fn a_name_gives_back_its_parts_and_orders_by_source_then_id() {
        let name = SecretName::new("aws-prod", "app/db/password").unwrap();
        assert_eq!(
            (name.source(), name.id(), &*name.joined()),
            ("aws-prod", "app/db/password", "aws-prod/app/db/password")
        );
        assert_eq!(name.to_string(), "aws-prod/app/db/password");
        assert_eq!(SecretName::parse("aws-prod/app/db/password").unwrap(), name);
        let mut names: Vec<SecretName> = ["a/x", "a-b/y", "a/w", "b/a"]
            .iter()
            .map(|n| SecretName::parse(n).unwrap())
            .collect();
        names.sort();
        let sorted: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["a/w", "a/x", "a-b/y", "b/a"]);
        assert_eq!(
            format!("{name:?}"),
            r#"SecretName { source: "aws-prod", id: "app/db/password" }"#
        );
    }

    #[test]
    fn ids_table() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("demo-password", Ok(())),
            ("app/db/password", Ok(())),
            (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
                Ok(()),
            ),
            ("a+b=c.d@e_f", Ok(())),
            ("", Err(NameError::Empty)),
            ("../etc/passwd", Err(NameError::BadSegment)),
            ("a/../b", Err(NameError::BadSegment)),
            ("a/./b", Err(NameError::BadSegment)),
            ("a//b", Err(NameError::BadSegment)),
            ("/abs", Err(NameError::BadSegment)),
            ("trailing/", Err(NameError::BadSegment)),
            ("..", Err(NameError::BadSegment)),
            ("nul\0byte", Err(NameError::BadChar)),
            ("space here", Err(NameError::BadChar)),
            ("percent%2F", Err(NameError::BadChar)),
            ("back\\slash", Err(NameError::BadChar)),
            ("ünicode", Err(NameError::BadChar)),
        ];
        for (id, want) in cases {
            assert_eq!(&validate_id(id), want, "id {id:?}");
        }
        assert!(matches!(
            validate_id(&"a".repeat(MAX_ID_LEN + 1)),
            Err(NameError::TooLong)
        ));
    }

    #[test]
    fn source_names_table() {
        assert!(validate_source_name("files").is_ok());
        assert!(validate_source_name("aws-prod_2").is_ok());
        assert!(matches!(
            validate_source_name("Files"),
            Err(NameError::BadSource)
        ));
        assert!(matches!(
            validate_source_name("a/b"),
            Err(NameError::BadSource)
        ));
        assert!(matches!(validate_source_name(""), Err(NameError::Empty)));
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("files/app/*", "files/app/db", true),
            ("files/app/*", "files/app/db/nested", true),
            ("files/app/*", "files/application", false),
            ("files/shared-token", "files/shared-token", true),
            ("files/shared-token", "files/shared-token2", false),
            ("*", "anything/at/all", true),
            ("files/?b", "files/ab", true),
            ("files/?b", "files/abb", false),
            ("*/db", "aws/db", true),
            ("*/db", "aws/db/x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (pattern, name, want) in cases {
            let glob = Glob::parse(pattern).unwrap();
            assert_eq!(glob.matches(name), want, "{pattern} ~ {name}");
            let (s, i) = name.split_once('/').unwrap_or((name, ""));
            if !i.is_empty() {
                assert_eq!(glob.matches_parts(s, i), want, "{pattern} ~ parts {name}");
            }
        }
        assert!(matches!(Glob::parse(""), Err(GlobError::Empty)));
        assert!(matches!(Glob::parse("a b"), Err(GlobError::BadChar)));
    }

    #[test]
    fn pathological_globs_take_at_most_len_p_times_len_s_steps() {
        // A backtracking matcher that tries every split takes exponentially many steps on these.
        let cases = [
            ("*a".repeat(50), "a".repeat(49), false),
            ("*a".repeat(50), "a".repeat(2000), true),
            (format!("{}b", "a*".repeat(30)), "a".repeat(2000), false),
            ("*?*?*?*?*?*?*?*?*x".to_owned(), "y".repeat(2000), false),
        ];
        for (pattern, name, want) in cases {
            let glob = Glob::parse(&pattern).unwrap();
            assert_eq!(glob.matches(&name), want, "{pattern}");
            let (matched, steps) = glob_match_counted(pattern.as_bytes(), name.as_bytes());
            assert_eq!(matched, want);
            let bound = (pattern.len() + 1) * (name.len() + 1);
            assert!(
                steps <= bound,
                "{steps} steps for a {}-byte pattern on {} bytes (bound {bound})",
                pattern.len(),
                name.len()
            );
        }
    }
}
