//! Config-file templates for `credagent render`: text with `{{ secret SOURCE/ID }}` or
//! `{{ secret SOURCE/ID field=KEY }}` placeholders, and the Secret Replacer's
//! `{{ secret SCHEME://PATH }}`, where a scheme names a source ([`Schemes`]). Parsing is pure;
//! the CLI fetches the values over the socket and writes the result. There is no escape for a
//! literal `{{`.

use std::collections::BTreeMap;

use crate::name::SecretName;

/// Which source each `SCHEME://` names. The defaults are the Secret Replacer's own schemes
/// (`awsSecret`, `s3`, `gopass`, `env`) mapped to sources of the usual names; `--scheme` and
/// `$CREDAGENT_SCHEMES` add to them or change them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemes(BTreeMap<String, String>);

impl Default for Schemes {
    fn default() -> Self {
        Schemes(
            [
                ("awsSecret", "aws"),
                ("s3", "s3"),
                ("gopass", "gopass"),
                ("env", "env"),
            ]
            .into_iter()
            .map(|(scheme, source)| (scheme.to_owned(), source.to_owned()))
            .collect(),
        )
    }
}

impl Schemes {
    /// The defaults, then `SCHEME=SOURCE` items in order (a later one wins).
    pub fn with<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut schemes = Schemes::default();
        for item in items {
            let (scheme, source) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected SCHEME=SOURCE"))?;
            let scheme_ok = !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !scheme_ok || crate::name::validate_source_name(source).is_err() {
                return Err(format!(
                    "{item:?}: a scheme is letters, digits and '-'; a source name is [a-z0-9_-]+"
                ));
            }
            schemes.0.insert(scheme.to_owned(), source.to_owned());
        }
        Ok(schemes)
    }

    /// `SOURCE/ID` or `SCHEME://PATH` as a secret name.
    pub fn name(&self, text: &str) -> Result<SecretName, String> {
        match text.split_once("://") {
            None => SecretName::parse(text).map_err(|e| format!("{text:?}: {e}")),
            Some((scheme, path)) => {
                let source = self.0.get(scheme).ok_or_else(|| {
                    format!(
                        "unknown scheme {scheme:?} in {text:?} (known: {}; add one with --scheme {scheme}=SOURCE)",
                        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                SecretName::new(source, path).map_err(|e| format!("{text:?}: {e}"))
            }
        }
    }
}

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

/// Splits a template into text and secret placeholders, with the default schemes (the tests').
#[cfg(test)]
pub fn parse_template(text: &str) -> Result<Vec<Piece>, TemplateError> {
    parse_template_with(text, &Schemes::default())
}

/// Splits a template into text and secret placeholders; `SCHEME://PATH` names go through
/// `schemes`.
pub fn parse_template_with(text: &str, schemes: &Schemes) -> Result<Vec<Piece>, TemplateError> {
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
        let name = schemes.name(name_text).map_err(err)?;
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

/// Parses `VAR=SOURCE/ID` or `VAR=SOURCE/ID#FIELD` (for `credagent exec --env`), with the
/// default schemes (the tests').
#[cfg(test)]
pub fn parse_env_binding(text: &str) -> Result<(String, SecretName, Option<String>), String> {
    parse_env_binding_with(text, &Schemes::default())
}

/// As `parse_env_binding`; the name may also be `SCHEME://PATH`, through `schemes`.
pub fn parse_env_binding_with(
    text: &str,
    schemes: &Schemes,
) -> Result<(String, SecretName, Option<String>), String> {
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
    let name = schemes.name(name)?;
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
    fn secret_replacer_schemes() {
        let text = "db={{ secret awsSecret://prod/db }}\nkey={{ secret gopass://team/key }}\n";
        assert_eq!(
            parse_template(text).unwrap(),
            vec![
                Piece::Text("db=".into()),
                secret("aws/prod/db", None),
                Piece::Text("\nkey=".into()),
                secret("gopass/team/key", None),
                Piece::Text("\n".into()),
            ]
        );
        // A scheme mapped elsewhere, and one added.
        let schemes = Schemes::with(["awsSecret=aws-prod", "vault=kv"]).unwrap();
        assert_eq!(
            parse_template_with(
                "{{ secret awsSecret://db }}{{ secret vault://a/b }}",
                &schemes
            )
            .unwrap(),
            vec![secret("aws-prod/db", None), secret("kv/a/b", None)]
        );
        // An unknown scheme names its line.
        let err = parse_template("ok\n{{ secret vault://a }}").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("unknown scheme \"vault\""), "{err}");
        assert!(Schemes::with(["nope"]).is_err());
        assert!(Schemes::with(["a=Bad Source"]).is_err());
        assert_eq!(
            parse_env_binding("DB=awsSecret://prod/db#password").unwrap(),
            (
                "DB".to_owned(),
                SecretName::parse("aws/prod/db").unwrap(),
                Some("password".to_owned())
            )
        );
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
}
