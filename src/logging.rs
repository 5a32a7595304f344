//! Diagnostics through `tracing`: to the systemd journal (with structured fields) when
//! systemd started us, otherwise readable lines on stderr.
//!
//! systemd passes `JOURNAL_STREAM=DEV:INODE` naming the stream it connected to
//! stdout/stderr (systemd.exec(5)); when it matches our stderr, events go to journald
//! natively through `tracing-journald`: the message as `MESSAGE`, the level as
//! `PRIORITY`, and every field as `HEARKEN_<FIELD>` (`journalctl HEARKEN_GROUP=glass`).
//! Otherwise each event is one line `hearken: [warning: |error: ]message` on stderr:
//! the messages are written to read as sentences, so the fields are left to the
//! journal. Colours only when stderr is a terminal. stdout stays free for
//! `--print-events`.
//!
//! The filter: `--log-level` (default `info`) for hearken's own messages and `warn` for
//! its dependencies; without `--log-level`, `RUST_LOG` (`EnvFilter` syntax) if set.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Where diagnostics go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The systemd journal, natively.
    Journal,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Parses `$JOURNAL_STREAM` (`DEV:INODE`, decimal) into (device, inode).
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Whether stderr is the journal stream: `$JOURNAL_STREAM` parses and names the
/// (device, inode) stderr is open on.
pub fn stderr_is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    match (journal_stream.and_then(parse_journal_stream), stderr) {
        (Some(j), Some(s)) => j == s,
        _ => false,
    }
}

/// (device, inode) of the file stderr is open on.
fn stderr_id() -> Option<(u64, u64)> {
    // SAFETY: fstat on fd 2 writes into the zeroed stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_ino))
}

/// Whether stderr is a terminal.
fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The filter directives: `--log-level` for hearken and `warn` for dependencies, or
/// `RUST_LOG` when no level is given, or `info`.
pub fn filter_directives(level: Option<LevelFilter>, rust_log: Option<&str>) -> String {
    match (level, rust_log.map(str::trim).filter(|s| !s.is_empty())) {
        (Some(l), _) => format!("warn,hearken={l}"),
        (None, Some(env)) => env.to_string(),
        (None, None) => "warn,hearken=info".to_string(),
    }
}

/// Installs the global subscriber; returns where diagnostics go. Call once.
pub fn init(level: Option<LevelFilter>) -> Destination {
    let directives = filter_directives(level, std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!(
            "hearken: warning: RUST_LOG={directives:?} is not a valid filter ({e}); using info"
        );
        EnvFilter::new("warn,hearken=info")
    });
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id());
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier("hearken".to_string())
                    .with_field_prefix(Some("HEARKEN".to_string()));
                if tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init()
                    .is_ok()
                {
                    return Destination::Journal;
                }
                return Destination::Stderr;
            }
            Err(e) => {
                // stderr is the journal stream anyway: plain lines still land there.
                eprintln!("hearken: cannot reach journald ({e}); logging to stderr");
            }
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(Human {
            ansi: !journal && stderr_is_tty(),
        });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    Destination::Stderr
}

/// The stderr line format: `hearken: [level: ]message`.
struct Human {
    ansi: bool,
}

/// Collects an event's `message` field.
#[derive(Default)]
struct MessageOnly(String);

impl tracing::field::Visit for MessageOnly {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The prefix for a level on stderr (empty for info), with its ANSI colour.
pub fn level_prefix(level: Level) -> (&'static str, &'static str) {
    match level {
        Level::ERROR => ("error: ", "\x1b[1;31m"),
        Level::WARN => ("warning: ", "\x1b[1;33m"),
        Level::INFO => ("", ""),
        Level::DEBUG => ("debug: ", "\x1b[2m"),
        Level::TRACE => ("trace: ", "\x1b[2m"),
    }
}

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut m = MessageOnly::default();
        event.record(&mut m);
        let (prefix, colour) = level_prefix(*event.metadata().level());
        if self.ansi && !colour.is_empty() {
            writeln!(w, "hearken: {colour}{prefix}\x1b[0m{}", m.0)
        } else {
            writeln!(w, "hearken: {prefix}{}", m.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_detection() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 8:12345\n"), Some((8, 12345)));
        for bad in ["", "8", "8:", ":1", "a:b", "8:1:2", "-1:5"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
        assert!(stderr_is_journal(Some("8:12345"), Some((8, 12345))));
        // Inherited by a child whose stderr was redirected: another inode.
        assert!(!stderr_is_journal(Some("8:12345"), Some((8, 999))));
        assert!(!stderr_is_journal(None, Some((8, 12345))));
        assert!(!stderr_is_journal(Some("junk"), Some((8, 12345))));
        assert!(!stderr_is_journal(Some("8:12345"), None));
    }

    #[test]
    fn filters() {
        assert_eq!(filter_directives(None, None), "warn,hearken=info");
        assert_eq!(filter_directives(None, Some("  ")), "warn,hearken=info");
        assert_eq!(
            filter_directives(None, Some("hearken::pipeline=trace")),
            "hearken::pipeline=trace"
        );
        assert_eq!(
            filter_directives(Some(LevelFilter::DEBUG), Some("trace")),
            "warn,hearken=debug"
        );
        for d in [
            filter_directives(Some(LevelFilter::ERROR), None),
            filter_directives(Some(LevelFilter::TRACE), None),
        ] {
            assert!(EnvFilter::try_new(&d).is_ok(), "{d}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(level_prefix(Level::INFO).0, "");
        assert_eq!(level_prefix(Level::WARN).0, "warning: ");
        assert_eq!(level_prefix(Level::ERROR).0, "error: ");
    }
}
