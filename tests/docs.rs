//! The docs keep up with the code: every config key `config.example.toml` shows (commented or
//! not) and every path in the route table appears in README.md or docs/*.md, every route in
//! docs/api.md, every relative link in them points at a file that exists, the per-type rows
//! of docs/config.md's key table name exactly the source types that take each key, and the code
//! map in docs/development.md names files that exist and every folder of `src/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their paths.
fn docs() -> Vec<(PathBuf, String)> {
    let mut files = vec![root().join("README.md")];
    let mut pages: Vec<_> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// `key = …` assignments of a TOML file, commented out or not (`# key = …`), as key names.
fn example_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_owned());
        }
    }
    keys
}

#[test]
fn every_key_of_the_example_config_is_documented() {
    let example = std::fs::read_to_string(root().join("config.example.toml")).unwrap();
    let keys = example_keys(&example);
    assert!(keys.len() > 30, "too few keys found: {keys:?}");
    let all: String = docs().into_iter().map(|(_, t)| t).collect();
    let missing: Vec<_> = keys
        .iter()
        .filter(|key| {
            // As a name in code: `key`, `x.key`, `key = …`, `key=…`.
            ![
                format!("`{key}`"),
                format!(".{key}`"),
                format!("`{key} ="),
                format!("{key} = "),
                format!(".{key} "),
            ]
            .iter()
            .any(|form| all.contains(form.as_str()))
        })
        .collect();
    assert!(missing.is_empty(), "undocumented config keys: {missing:?}");
}

#[test]
fn every_route_is_documented() {
    let source = std::fs::read_to_string(root().join("src/server/route.rs")).unwrap();
    // The route table, not the module's own tests.
    let routes = source.split("#[cfg(test)]").next().unwrap_or_default();
    let paths: Vec<&str> = routes
        .split('"')
        .filter(|s| s.starts_with("/v1/") && !s.contains(' '))
        .collect();
    assert!(paths.len() >= 4, "{paths:?}");
    let reference = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    for path in paths {
        let documented = path.trim_end_matches('/');
        assert!(
            reference.contains(documented),
            "route {path} is not in docs/api.md"
        );
    }
}

#[test]
fn relative_links_point_at_files_that_exist() {
    for (doc, text) in docs() {
        let dir = doc.parent().unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split([')', '#']).next().unwrap_or_default();
            if target.is_empty() || target.contains(':') || target.contains(' ') {
                continue;
            }
            assert!(
                Path::new(dir).join(target).exists(),
                "{} links to {target}, which does not exist",
                doc.display()
            );
        }
    }
}

/// Every source type, as `sources.NAME.type` takes it.
const SOURCE_TYPES: [&str; 10] = [
    "file",
    "env",
    "aws-secretsmanager",
    "aws-ssm",
    "aws-s3",
    "aws-credentials",
    "vault",
    "vault-lease",
    "command",
    "oauth2",
];

/// The common keys docs/config.md's key table lists as `sources.NAME.KEY`, each with the
/// types its row names in parentheses (`aws-*` is the three AWS types; no list: every type).
fn source_key_rows(table: &str) -> Vec<(String, Vec<&'static str>)> {
    let mut rows = Vec::new();
    for line in table.lines() {
        let Some(rest) = line.strip_prefix("| `sources.NAME.") else {
            continue;
        };
        let (key, rest) = rest.split_once('`').unwrap();
        let cell = rest.split('|').next().unwrap().trim();
        let types: Vec<&'static str> = match cell.strip_prefix('(') {
            None => SOURCE_TYPES.to_vec(),
            Some(list) => {
                let list = list.strip_suffix(')').unwrap();
                SOURCE_TYPES
                    .into_iter()
                    .filter(|t| {
                        list.split(", ")
                            .any(|named| named == *t || (named == "aws-*" && t.starts_with("aws-")))
                    })
                    .collect()
            }
        };
        rows.push((key.to_owned(), types));
    }
    rows
}

/// The per-type rows of docs/config.md's key table say which source types take each key: the
/// config parser accepts the key for exactly those types (for any other it is an unknown field).
#[test]
fn the_source_key_table_names_exactly_the_types_that_take_each_key() {
    let table = std::fs::read_to_string(root().join("docs/config.md")).unwrap();
    let rows = source_key_rows(&table);
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "ttl_secs",
        "fetch_timeout_secs",
        "startup_check",
        "max_concurrent_fetches",
        "minted",
    ] {
        assert!(
            keys.contains(&key),
            "the table has no row for {key}: {keys:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    for (key, types) in rows.iter().filter(|(k, _)| k != "type") {
        let value = match key.as_str() {
            k if k.ends_with("_secs") || k.ends_with("_fetches") => "5",
            "allow_plain_http" | "minted" => "true",
            "startup_check" => "\"retry\"",
            _ => "\"APP_\"",
        };
        for ty in SOURCE_TYPES {
            // Required keys that would be reported before any other (the AWS types' region and
            // base identity).
            let prelude = if ty.starts_with("aws-") {
                "region = \"eu-west-1\"\nauth = \"instance-profile\"\n"
            } else {
                ""
            };
            std::fs::write(
                &config,
                format!(
                    "[server]\nsocket = \"{}/agent.sock\"\n\n[sources.s]\ntype = \"{ty}\"\n\
                     {prelude}{key} = {value}\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_credagent"))
                .args(["check-config", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let accepted = !stderr.contains(&format!("unknown field `{key}`"));
            assert_eq!(
                accepted,
                types.contains(&ty),
                "docs/config.md says sources.NAME.{key} is for {types:?}; for {ty} check-config says: {stderr}"
            );
        }
    }
}

/// The code map: the first ```text block of docs/development.md.
fn code_map() -> String {
    let text = std::fs::read_to_string(root().join("docs/development.md")).unwrap();
    let start = text
        .find("```text\n")
        .expect("docs/development.md has a code map")
        + 8;
    let end = start + text[start..].find("```").unwrap();
    text[start..end].to_owned()
}

/// What the code map names: files (each must exist) and folders, as paths from the repository
/// root. A line at column 0 names a path from the root (a folder ends with `/`); a line indented
/// by two spaces names an entry of the last root-level folder; a bare `name.rs` or `name/` in a
/// line (or in the continuation lines below it) is inside the folder that line is about.
fn named_in_code_map() -> (Vec<String>, Vec<String>) {
    let (mut files, mut folders) = (Vec::new(), Vec::new());
    let mut top = String::new();
    let mut context: Option<String> = None;
    for line in code_map().lines() {
        let indent = line.len() - line.trim_start().len();
        let mut tokens = line.split_whitespace().peekable();
        if indent == 0 || indent == 2 {
            let Some(first) = tokens.next() else { continue };
            let first = first.trim_end_matches(',');
            let path = if indent == 0 {
                first.to_owned()
            } else {
                format!("{top}{first}")
            };
            if first.ends_with('/') {
                if indent == 0 {
                    top = path.clone();
                }
                folders.push(path.trim_end_matches('/').to_owned());
                context = Some(path);
            } else {
                if !path.contains('*') {
                    files.push(path);
                }
                // `file.rs env.rs command.rs   the small kinds`: further entries of the same folder.
                while let Some(next) = tokens.peek() {
                    if !next.ends_with(".rs") || next.contains('/') {
                        break;
                    }
                    files.push(format!("{top}{next}"));
                    tokens.next();
                }
                context = None;
            }
        }
        for token in tokens {
            let token = token
                .trim_start_matches('(')
                .trim_end_matches([',', ';', ':', ')']);
            if ["src/", "tests/", "bench/", "scripts/"]
                .iter()
                .any(|p| token.starts_with(p))
            {
                if !token.contains('*') && !token.ends_with('/') {
                    files.push(token.to_owned());
                }
                continue;
            }
            let Some(folder) = &context else { continue };
            if let Some(name) = token.strip_suffix(".rs")
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                files.push(format!("{folder}{token}"));
            } else if let Some(name) = token.strip_suffix('/')
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                folders.push(format!("{folder}{name}"));
            }
        }
    }
    (files, folders)
}

#[test]
fn every_file_the_code_map_names_exists_and_every_src_folder_is_named() {
    let (files, folders) = named_in_code_map();
    assert!(
        files.iter().any(|f| f == "src/source/section.rs"),
        "{files:?}"
    );
    let missing: Vec<_> = files.iter().filter(|f| !root().join(f).is_file()).collect();
    assert!(
        missing.is_empty(),
        "the code map names files that do not exist: {missing:?}"
    );
    let mut unnamed = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let rel = path.strip_prefix(root()).unwrap().display().to_string();
                if !folders.contains(&rel) {
                    unnamed.push(rel);
                }
                stack.push(path);
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "folders of src/ the code map does not name: {unnamed:?}"
    );
}
