//! The config reference (Markdown) as the man page `credagent.toml(5)`.
//!
//! It understands the Markdown the reference is written in and nothing more: `#`–`####`
//! headings, paragraphs, `-` lists (nested by indentation), fenced code blocks, pipe tables, and
//! inline `code`, **bold**, *emphasis* and [links](…) (the link text is kept, the target dropped).
//! The first `#` heading is the page's title and is not repeated in its body.

/// The whole page: `.TH`, a NAME section, then the reference.
pub(crate) fn config_page(markdown: &str, source: &str, date: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH CREDAGENT.TOML 5 \"{}\" \"{}\" \"credagent manual\"\n",
        escape_text(date),
        escape_text(source)
    ));
    out.push_str(".SH NAME\ncredagent.toml \\- configuration file of the credagent agent\n");
    out.push_str(".SH SYNOPSIS\n/etc/credagent/config.toml\n");
    let mut lines = markdown.lines().peekable();
    let mut seen_title = false;
    let mut paragraph = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if let Some(fence) = trimmed.trim_start().strip_prefix("```") {
            let _ = fence;
            flush_paragraph(&mut out, &mut paragraph);
            out.push_str(".PP\n.RS 4\n.nf\n");
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    break;
                }
                out.push_str(&escape_line(&escape_text(code)));
                out.push('\n');
            }
            out.push_str(".fi\n.RE\n");
            continue;
        }
        if let Some((level, title)) = heading(trimmed) {
            flush_paragraph(&mut out, &mut paragraph);
            if level == 1 && !seen_title {
                seen_title = true;
                out.push_str(".SH DESCRIPTION\n");
                continue;
            }
            let macro_name = if level <= 2 { ".SH" } else { ".SS" };
            let title = inline(title);
            let title = if level <= 2 {
                title.to_uppercase()
            } else {
                title
            };
            out.push_str(&format!("{macro_name} \"{}\"\n", title.replace('"', "")));
            continue;
        }
        if trimmed.trim_start().starts_with('|') {
            flush_paragraph(&mut out, &mut paragraph);
            let mut rows = vec![trimmed.to_owned()];
            while let Some(next) = lines.peek() {
                if !next.trim_start().starts_with('|') {
                    break;
                }
                rows.push(next.trim_end().to_owned());
                lines.next();
            }
            table(&mut out, &rows);
            continue;
        }
        let indent = trimmed.len() - trimmed.trim_start().len();
        if let Some(item) = trimmed.trim_start().strip_prefix("- ") {
            flush_paragraph(&mut out, &mut paragraph);
            // An item and its continuation lines (indented further) are one paragraph.
            let mut text = item.to_owned();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                let next_trim = next.trim();
                if next_trim.is_empty()
                    || next_trim.starts_with("- ")
                    || next_trim.starts_with("```")
                    || next_trim.starts_with('|')
                    || next_indent <= indent
                {
                    break;
                }
                text.push(' ');
                text.push_str(next_trim);
                lines.next();
            }
            let depth = indent / 2;
            if depth > 0 {
                out.push_str(".RS 2\n");
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&escape_line(&inline(&text)));
            out.push('\n');
            if depth > 0 {
                out.push_str(".RE\n");
            }
            continue;
        }
        if trimmed.is_empty() {
            flush_paragraph(&mut out, &mut paragraph);
            continue;
        }
        if !paragraph.is_empty() {
            paragraph.push(' ');
        }
        paragraph.push_str(trimmed.trim_start());
    }
    flush_paragraph(&mut out, &mut paragraph);
    out.push_str(".SH SEE ALSO\ncredagent(1)\n");
    out
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if (1..=4).contains(&level) {
        line[level..].strip_prefix(' ').map(|t| (level, t.trim()))
    } else {
        None
    }
}

fn flush_paragraph(out: &mut String, paragraph: &mut String) {
    if paragraph.is_empty() {
        return;
    }
    out.push_str(".PP\n");
    out.push_str(&escape_line(&inline(paragraph)));
    out.push('\n');
    paragraph.clear();
}

/// A pipe table: each row after the header and the separator becomes a tagged paragraph whose
/// tag is the first cell and whose body is the other cells under their column names.
fn table(out: &mut String, rows: &[String]) {
    let cells = |row: &str| -> Vec<String> {
        row.trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let Some(header) = rows.first().map(|r| cells(r)) else {
        return;
    };
    for row in rows.iter().skip(1) {
        let row = cells(row);
        if row
            .iter()
            .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        {
            continue;
        }
        let Some((first, rest)) = row.split_first() else {
            continue;
        };
        out.push_str(".TP\n");
        out.push_str(&escape_line(&inline(first)));
        out.push('\n');
        let body: Vec<String> = rest
            .iter()
            .zip(header.iter().skip(1))
            .filter(|(cell, _)| !cell.is_empty())
            .map(|(cell, name)| {
                if name.is_empty() {
                    inline(cell)
                } else {
                    format!("{}: {}", inline(name), inline(cell))
                }
            })
            .collect();
        out.push_str(&escape_line(&body.join("; ")));
        out.push('\n');
    }
}

/// Inline Markdown as roff: `code` and **bold** bold, *emphasis* italic, links as their text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '`' => {
                if let Some(end) = chars[i + 1..].iter().position(|&x| x == '`') {
                    let code: String = chars[i + 1..i + 1 + end].iter().collect();
                    out.push_str("\\fB");
                    out.push_str(&escape_text(&code).replace('-', "\\-"));
                    out.push_str("\\fR");
                    i += end + 2;
                    continue;
                }
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                if let Some(end) = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '*')
                {
                    let inner: String = chars[i + 2..end].iter().collect();
                    out.push_str("\\fB");
                    out.push_str(&inline(&inner));
                    out.push_str("\\fR");
                    i = end + 2;
                    continue;
                }
            }
            '*' => {
                if let Some(end) = chars[i + 1..].iter().position(|&x| x == '*')
                    && end > 0
                {
                    let inner: String = chars[i + 1..i + 1 + end].iter().collect();
                    out.push_str("\\fI");
                    out.push_str(&inline(&inner));
                    out.push_str("\\fR");
                    i += end + 2;
                    continue;
                }
            }
            '[' => {
                if let Some(close) = chars[i + 1..].iter().position(|&x| x == ']')
                    && chars.get(i + 2 + close) == Some(&'(')
                    && let Some(paren) = chars[i + 3 + close..].iter().position(|&x| x == ')')
                {
                    let label: String = chars[i + 1..i + 1 + close].iter().collect();
                    out.push_str(&inline(&label));
                    i += close + paren + 4;
                    continue;
                }
            }
            _ => {}
        }
        out.push_str(&escape_text(&c.to_string()));
        i += 1;
    }
    out
}

/// Text with roff's escape character escaped.
fn escape_text(text: &str) -> String {
    text.replace('\\', "\\e")
}

/// A line that would start with a control character (`.` or `'`) is protected with `\&`.
fn escape_line(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_sections_paragraphs_lists_code_and_tags() {
        let page = config_page(
            "# Configuration\n\nIntro `ttl_secs` **bold** [link](x.md).\n\n## Server\n\
             - one\n  continued\n\n```toml\n.dot = 1\n```\n\n| key | default |\n|---|---|\n| `socket` | `/run/x` |\n",
            "credagent 1.0",
            "22 Nov 2026",
        );
        assert!(
            page.starts_with(
                ".TH CREDAGENT.TOML 5 \"22 Nov 2026\" \"credagent 1.0\" \"credagent manual\""
            ),
            "{page}"
        );
        assert!(
            page.contains(".SH DESCRIPTION\n.PP\nIntro \\fBttl_secs\\fR \\fBbold\\fR link.\n"),
            "{page}"
        );
        assert!(page.contains(".SH \"SERVER\"\n"), "{page}");
        assert!(page.contains(".IP \\(bu 2\none continued\n"), "{page}");
        assert!(page.contains(".nf\n\\&.dot = 1\n.fi\n"), "{page}");
        assert!(
            page.contains(".TP\n\\fBsocket\\fR\ndefault: \\fB/run/x\\fR\n"),
            "{page}"
        );
    }

    #[test]
    fn backslashes_and_unclosed_marks_are_kept_as_text() {
        assert_eq!(inline("a\\b"), "a\\eb");
        assert_eq!(inline("`open"), "`open");
        assert_eq!(inline("2 * 3"), "2 * 3");
        assert_eq!(inline("[x] y"), "[x] y");
    }
}
