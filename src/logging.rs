//! The agent's log sink, chosen once at start-up from `[log] format`: journald's native protocol
//! with the right `PRIORITY` when stderr is the journal (`auto`, the default, or `journald`),
//! today's text lines on stderr otherwise (`text`), or one JSON object a line (`json`) for log
//! shippers.
//!
//! It owns the filter (`CREDAGENT_LOG`, capped for the libraries that would log bodies) and the
//! journald layer. It does not own the audit trail (the audit module writes it, and sends it to
//! journald as entries of their own when this module chose journald).

use std::fmt::Write as _;

use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::journald::{self, Entry, Journal, Priority};

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald's native protocol when stderr is the journal, text otherwise.
    #[default]
    Auto,
    /// Text lines on stderr.
    Text,
    /// One JSON object a line on stderr.
    Json,
    /// journald's native protocol (text on stderr, with a warning, when journald cannot be
    /// reached).
    Journald,
}

/// Libraries that log request and response bodies (secret values, tokens, signed headers) at
/// debug/trace: capped at `info` whatever `CREDAGENT_LOG` asks for.
const CAPPED: [&str; 12] = [
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_sdk_secretsmanager",
    "aws_sdk_sts",
    "aws_config",
    "aws_sigv4",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

fn filter() -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CREDAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // SECURITY: see CAPPED.
    for target in CAPPED {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global log subscriber for `format`. Called once, by `serve`.
pub fn init(format: LogFormat) {
    let journal = match format {
        LogFormat::Auto if journald::stderr_is_journal() => Journal::connect().ok(),
        LogFormat::Journald => Journal::connect().map_err(|e| e.to_string()).map_or_else(
            |err| {
                eprintln!("credagent: warning: log format journald: cannot reach journald ({err}); logging text to stderr");
                None
            },
            Some,
        ),
        _ => None,
    };
    let registry = tracing_subscriber::registry().with(filter());
    if let Some(journal) = journal {
        journald::set_active();
        registry.with(JournalLayer { journal }).init();
    } else if format == LogFormat::Json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .init();
    }
}

/// Sends each event to journald as one entry: `MESSAGE` (the message and its fields as the text
/// format writes them), `PRIORITY` from the level, and each field as a field of its own
/// (`ERROR`, `SOURCE`, `REQUEST_ID`, …). Never a value: the events are the same as in text.
struct JournalLayer {
    journal: Journal,
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut entry = Entry::new(priority(*event.metadata().level()));
        entry.field("MESSAGE", fields.text.as_bytes());
        for (name, value) in &fields.own {
            entry.field(name, value.as_bytes());
        }
        if self.journal.send(&entry).is_err() {
            // journald is gone or the entry is too large: stderr still reaches the journal.
            eprintln!("{}", fields.text);
        }
    }
}

fn priority(level: Level) -> Priority {
    match level {
        Level::ERROR => Priority::Err,
        Level::WARN => Priority::Warning,
        Level::INFO => Priority::Info,
        _ => Priority::Debug,
    }
}

/// Field names journald sets or that this layer sets itself: never taken from an event.
const RESERVED: [&str; 3] = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"];

/// An event's message and fields: `text` as the text format writes them, `own` each field under
/// its journal name.
#[derive(Default)]
struct Fields {
    text: String,
    own: Vec<(String, String)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            if self.text.is_empty() {
                self.text = value;
            } else {
                self.text.insert_str(0, &format!("{value} "));
            }
            return;
        }
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        let _ = write!(self.text, "{}={}", field.name(), value);
        let name = field.name().to_ascii_uppercase();
        if journald::valid_name(&name) && !RESERVED.contains(&name.as_str()) {
            self.own.push((name, value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), Priority::Err);
        assert_eq!(priority(Level::WARN), Priority::Warning);
        assert_eq!(priority(Level::INFO), Priority::Info);
        assert_eq!(priority(Level::DEBUG), Priority::Debug);
        assert_eq!(priority(Level::TRACE), Priority::Debug);
    }

    #[test]
    fn formats_are_the_documented_words() {
        #[derive(Deserialize)]
        struct T {
            format: LogFormat,
        }
        for (word, want) in [
            ("auto", LogFormat::Auto),
            ("text", LogFormat::Text),
            ("json", LogFormat::Json),
            ("journald", LogFormat::Journald),
        ] {
            let t: T = toml::from_str(&format!("format = {word:?}")).unwrap();
            assert_eq!(t.format, want);
        }
        assert!(toml::from_str::<T>("format = \"syslog\"").is_err());
    }
}
