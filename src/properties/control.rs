//! Control file: any text parses without panicking into at least one command, bad lines are
//! reported by their real line numbers, and well-formed `flush` lines come back in order.

use proptest::prelude::*;

use super::hostile_text;
use crate::control::{ControlCommand, parse_control};
use crate::name::Glob;

proptest! {
    #[test]
    fn any_text_gives_at_least_one_command_and_real_line_numbers(
        text in hostile_text(&["flush", " ", "\t", "\n", "\r\n", "#", "*", "files/*", "a b", "?"]),
    ) {
        let (commands, bad) = parse_control(&text);
        prop_assert!(!commands.is_empty());
        let lines = text.lines().count();
        let mut last = 0;
        for b in &bad {
            prop_assert!(b.line > last && b.line <= lines, "line {} of {}", b.line, lines);
            last = b.line;
        }
    }

    #[test]
    fn flush_lines_come_back_in_order(
        patterns in prop::collection::vec("[a-z0-9/*?_.-]{1,20}", 1..10),
        comments in prop::collection::vec(prop::option::of("#[^\n\r]{0,20}"), 10),
        indent in "[ \t]{0,3}",
    ) {
        let mut text = String::new();
        for (pattern, comment) in patterns.iter().zip(comments.iter().cycle()) {
            if let Some(comment) = comment {
                text.push_str(comment);
                text.push('\n');
            }
            text.push_str(&format!("{indent}flush{indent} {pattern}{indent}\n"));
        }
        let (commands, bad) = parse_control(&text);
        prop_assert!(bad.is_empty(), "{:?}", bad);
        let want: Vec<ControlCommand> = patterns
            .iter()
            .map(|p| {
                ControlCommand::Flush((p != "*").then(|| Glob::parse(p)).transpose().ok().flatten())
            })
            .collect();
        prop_assert_eq!(commands, want);
    }
}
