//! Config-file templates for `credagent render`: text with `{{ secret SOURCE/ID }}` or
//! `{{ secret SOURCE/ID field=KEY }}` placeholders. Parsing is pure; the CLI fetches the values
//! over the socket and writes the result. There is no escape for a literal `{{`.

use crate::name::SecretName;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A secret (with an optional JSON field) to substitute.
    Secret {
        /// `SOURCE/ID`.
        name: SecretName,
        /// `field=KEY`.
        field: Option<String>,
    },
}

/// A template error with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TemplateError {
    /// Line of the offending placeholder.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Splits a template into text and secret placeholders.
pub fn parse_template(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut consumed = 0usize;
    while let Some(open) = rest.find("{{") {
        let line = text[..consumed + open].matches('\n').count() + 1;
        let err = |reason: String| TemplateError { line, reason };
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| err("`{{` without `}}`".to_owned()))?;
        let inner = after[..close].trim();
        let mut words = inner.split_whitespace();
        if words.next() != Some("secret") {
            return Err(err(format!(
                "unknown placeholder {{{{ {inner} }}}} (expected `secret SOURCE/ID`)"
            )));
        }
        let name_text = words
            .next()
            .ok_or_else(|| err("`secret` needs SOURCE/ID".to_owned()))?;
        let name = SecretName::parse(name_text).map_err(|e| err(format!("{name_text:?}: {e}")))?;
        let field = match words.next() {
            None => None,
            Some(word) => match word.strip_prefix("field=") {
                Some(f) if !f.is_empty() => Some(f.to_owned()),
                _ => {
                    return Err(err(format!(
                        "unexpected {word:?} (only field=KEY may follow the name)"
                    )));
                }
            },
        };
        if let Some(extra) = words.next() {
            return Err(err(format!("unexpected {extra:?}")));
        }
        pieces.push(Piece::Secret { name, field });
        let used = open + 2 + close + 2;
        consumed += used;
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// Parses `VAR=SOURCE/ID` or `VAR=SOURCE/ID#FIELD` (for `credagent exec --env`).
pub fn parse_env_binding(text: &str) -> Result<(String, SecretName, Option<String>), String> {
    let (var, target) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected VAR=SOURCE/ID[#FIELD]"))?;
    if var.is_empty()
        || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || var.as_bytes()[0].is_ascii_digit()
    {
        return Err(format!("{var:?} is not a valid environment variable name"));
    }
    let (name, field) = match target.split_once('#') {
        Some((name, field)) if !field.is_empty() => (name, Some(field.to_owned())),
        Some(_) => return Err(format!("{text:?}: empty field after '#'")),
        None => (target, None),
    };
    let name = SecretName::parse(name).map_err(|e| format!("{name:?}: {e}"))?;
    Ok((var.to_owned(), name, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, field: Option<&str>) -> Piece {
        Piece::Secret {
            name: SecretName::parse(name).unwrap(),
            field: field.map(str::to_owned),
        }
    }

    #[test]
    fn parse_table() {
        assert_eq!(
            parse_template("user=app\npass={{ secret aws/prod/db field=password }}\n").unwrap(),
            vec![
                Piece::Text("user=app\npass=".into()),
                secret("aws/prod/db", Some("password")),
                Piece::Text("\n".into())
            ]
        );
        assert_eq!(
            parse_template("{{secret files/a}}{{ secret files/b }}").unwrap(),
            vec![secret("files/a", None), secret("files/b", None)]
        );
        assert_eq!(
            parse_template("no placeholders").unwrap(),
            vec![Piece::Text("no placeholders".into())]
        );
        for (bad, line) in [
            ("a\n{{ secret files/a", 2),
            ("{{ env HOME }}", 1),
            ("x\ny\n{{ secret }}", 3),
            ("{{ secret files/../etc }}", 1),
            ("{{ secret files/a field= }}", 1),
            ("{{ secret files/a field=x extra }}", 1),
        ] {
            assert_eq!(parse_template(bad).unwrap_err().line, line, "{bad}");
        }
    }

    #[test]
    fn env_binding_table() {
        let (var, name, field) = parse_env_binding("DB_PASSWORD=aws/prod/db#password").unwrap();
        assert_eq!(
            (var.as_str(), name.to_string().as_str(), field.as_deref()),
            ("DB_PASSWORD", "aws/prod/db", Some("password"))
        );
        assert!(parse_env_binding("TOKEN=files/token").unwrap().2.is_none());
        for bad in [
            "novalue",
            "=files/a",
            "1X=files/a",
            "A-B=files/a",
            "A=files",
            "A=files/a#",
        ] {
            assert!(parse_env_binding(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_templates_never_panic() {
        let seeds = ["a {{ secret files/x field=y }} b", "{{secret a/b}}"];
        let tokens = ["{{", "}}", "{", "}", "secret", "field=", "\n", "é"];
        for input in crate::testutil::hostile_inputs(&seeds, &tokens, 3000) {
            let _ = parse_template(&String::from_utf8_lossy(&input));
        }
    }
}
