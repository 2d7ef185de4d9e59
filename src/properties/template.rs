//! Templates: any text parses or fails without panicking, errors name a line that exists, and a
//! template assembled from known pieces parses back into exactly those pieces.

use proptest::prelude::*;

use super::{hostile_text, secret_id, source_name};
use crate::name::SecretName;
use crate::template::{Piece, parse_env_binding, parse_template};

/// Literal text that cannot open a placeholder: no `{{`, and no trailing `{` that would join the
/// next placeholder's `{{`.
fn literal() -> impl Strategy<Value = String> {
    "[^{]{1,20}|[^{]{0,10}\\{[^{]{1,10}"
}

fn placeholder() -> impl Strategy<Value = (SecretName, Option<String>, String)> {
    (
        source_name(),
        secret_id(),
        prop::option::of("[A-Za-z0-9_.-]{1,12}"),
        "[ \t\n]{0,2}",
        "[ \t\n]{1,2}",
    )
        .prop_filter_map("valid name", |(source, id, field, pad, sep)| {
            let name = SecretName::new(&source, &id).ok()?;
            let field_text = field
                .as_ref()
                .map(|f| format!("{sep}field={f}"))
                .unwrap_or_default();
            let text = format!("{{{{{pad}secret{sep}{name}{field_text}{pad}}}}}");
            Some((name, field, text))
        })
}

proptest! {
    #[test]
    fn any_text_never_panics_and_errors_name_a_real_line(
        text in hostile_text(&["{{", "}}", "{", "}", "secret ", "files/a", "field=", "field=x", "\n", " "]),
    ) {
        if let Err(err) = parse_template(&text) {
            prop_assert!(err.line >= 1 && err.line <= text.split('\n').count());
        }
        let _ = parse_env_binding(&text);
    }

    #[test]
    fn assembled_templates_parse_back_into_their_pieces(
        parts in prop::collection::vec((prop::option::of(literal()), placeholder()), 0..6),
        tail in prop::option::of(literal()),
    ) {
        let mut text = String::new();
        let mut want = Vec::new();
        for (lit, (name, field, placeholder)) in parts {
            if let Some(lit) = lit {
                text.push_str(&lit);
                want.push(Piece::Text(lit));
            }
            text.push_str(&placeholder);
            want.push(Piece::Secret { name, field });
        }
        if let Some(tail) = tail {
            text.push_str(&tail);
            want.push(Piece::Text(tail));
        }
        prop_assert_eq!(parse_template(&text), Ok(want));
    }

    #[test]
    fn env_bindings_round_trip(
        var in "[A-Z_][A-Z0-9_]{0,15}",
        source in source_name(),
        id in secret_id(),
        field in prop::option::of("[^#]{1,12}"),
    ) {
        let name = SecretName::new(&source, &id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let text = match &field {
            Some(f) => format!("{var}={name}#{f}"),
            None => format!("{var}={name}"),
        };
        prop_assert_eq!(parse_env_binding(&text), Ok((var, name, field)));
    }
}
