//! The docs keep up with the code: every config key `config.example.toml` shows (commented or
//! not) and every path in the route table appears in README.md or docs/*.md, and every relative
//! link in them points at a file that exists.

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
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for path in paths {
        let documented = path.trim_end_matches('/');
        assert!(
            readme.contains(documented),
            "route {path} is not in README.md's HTTP API section"
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
