//! Progress reporting that reads well where the code runs.
//!
//! In an interactive terminal, progress is an indicatif bar on stderr (with the `cli` feature;
//! without it, the lines below on stderr). Elsewhere — in a
//! notebook, where evcxr streams stdout live but renders neither `\r` nor bars, and in logs —
//! it is a few plain lines, the way tqdm, Keras' `verbose=2` and cargo report:
//!
//! - nothing while the work is young: an operation that ends within [`QUIET_FOR`] prints only
//!   its closing line;
//! - once it has run that long, one line saying it is under way;
//! - then a line at 25, 50 and 75 %, but never sooner than [`MIN_INTERVAL`] after the last
//!   one (without a known total: every [`MIN_INTERVAL`]);
//! - one closing line with the count, the time and the rate — or, on an error, one line
//!   saying what failed and how far it got.
//!
//! `FLOWERS_KIT_QUIET=1` silences everything.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an operation runs before it says it is under way.
pub const QUIET_FOR: Duration = Duration::from_secs(2);

/// The least time between two progress lines.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// What is being counted: drives the formatting of lines and bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Downloaded bytes, shown in MiB.
    Bytes,
    /// Items such as images, shown as counts.
    Items,
}

/// Where time comes from: the system's monotonic clock, or a fake one in tests.
pub trait Clock: Send {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The monotonic system clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Where lines go: stdout, or a collector in tests.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// How far an operation got, for its closing line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Units done (bytes or items), counted from the start of this run.
    pub done: u64,
    /// Units already there when the run started (a resumed download).
    pub resumed: u64,
    /// The total, if known.
    pub total: Option<u64>,
    /// Seconds since the start.
    pub seconds: f64,
}

impl Summary {
    /// Units per second over this run.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.seconds.max(1e-9)
    }

    /// "45.8 MiB in 0.5 s (99.6 MiB/s)": a byte count's size, time and rate.
    pub fn bytes(&self) -> String {
        format!(
            "{:.1} MiB in {:.1} s ({:.1} MiB/s)",
            mib(self.done.saturating_add(self.resumed)),
            self.seconds,
            self.rate() / (1024.0 * 1024.0)
        )
    }
}

/// Bytes in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A running progress report for one operation.
pub struct Progress {
    label: String,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    resumed: u64,
    style: Style,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("label", &self.label)
            .field("done", &self.done)
            .field("total", &self.total)
            .finish()
    }
}

enum Style {
    #[cfg(feature = "cli")]
    Bar(indicatif::ProgressBar, Instant),
    Lines(Lines),
    Silent,
}

/// The state of line-style reporting.
struct Lines {
    clock: Box<dyn Clock>,
    sink: Sink,
    started: Duration,
    /// When the last line was printed; `None` until the "under way" line.
    last_line: Option<Duration>,
    /// The next quarter (25, 50, 75) that deserves a line.
    next_quarter: u64,
}

/// True inside an evcxr kernel, which sets `EVCXR_IS_RUNTIME` in the process that runs cells.
pub fn in_notebook() -> bool {
    std::env::var_os("EVCXR_IS_RUNTIME").is_some()
}

impl Progress {
    /// Starts reporting an operation of `total` units (`None` when unknown, e.g. no
    /// Content-Length): a bar in a terminal, lines elsewhere, nothing when quiet.
    pub fn new(label: &str, total: Option<u64>, unit: Unit) -> Self {
        if std::env::var_os("FLOWERS_KIT_QUIET").is_some() {
            Progress::silent(label, total, unit)
        } else if !in_notebook() && std::io::stderr().is_terminal() {
            Progress::terminal(label, total, unit)
        } else {
            let stdout: Sink = Arc::new(|line: &str| println!("{line}"));
            Progress::lines(label, total, unit, Box::<SystemClock>::default(), stdout)
        }
    }

    /// A bar that redraws itself in place.
    #[cfg(feature = "cli")]
    fn terminal(label: &str, total: Option<u64>, unit: Unit) -> Self {
        let bar = Style::Bar(terminal_bar(label, total, unit), Instant::now());
        Progress::with_style(label, total, unit, bar)
    }

    /// Without the `cli` feature (and its bar), lines on standard error.
    #[cfg(not(feature = "cli"))]
    fn terminal(label: &str, total: Option<u64>, unit: Unit) -> Self {
        let stderr: Sink = Arc::new(|line: &str| eprintln!("{line}"));
        Progress::lines(label, total, unit, Box::<SystemClock>::default(), stderr)
    }

    /// A report that prints nothing.
    pub fn silent(label: &str, total: Option<u64>, unit: Unit) -> Self {
        Progress::with_style(label, total, unit, Style::Silent)
    }

    fn with_style(label: &str, total: Option<u64>, unit: Unit, style: Style) -> Self {
        Progress {
            label: label.to_string(),
            unit,
            total,
            done: 0,
            resumed: 0,
            style,
        }
    }

    /// Line-style reporting with its own clock and sink (what tests drive).
    pub fn lines(
        label: &str,
        total: Option<u64>,
        unit: Unit,
        clock: Box<dyn Clock>,
        sink: Sink,
    ) -> Self {
        let started = clock.now();
        let lines = Lines {
            clock,
            sink,
            started,
            last_line: None,
            next_quarter: 25,
        };
        Progress::with_style(label, total, unit, Style::Lines(lines))
    }

    /// Units already done before this run (a resumed download starts part-way).
    pub fn resume_from(&mut self, done: u64) {
        self.resumed = done;
        #[cfg(feature = "cli")]
        if let Style::Bar(bar, _) = &self.style {
            bar.set_position(done);
        }
    }

    /// Marks `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        let position = self.resumed.saturating_add(self.done);
        let amount = self.amount();
        match &mut self.style {
            #[cfg(feature = "cli")]
            Style::Bar(bar, _) => bar.set_position(position),
            Style::Lines(lines) => {
                let now = lines.clock.now();
                let elapsed = now.saturating_sub(lines.started);
                let percent = self
                    .total
                    .filter(|&t| t > 0)
                    .map(|t| position.saturating_mul(100) / t);
                match lines.last_line {
                    None if elapsed >= QUIET_FOR && percent.is_none_or(|p| p < 100) => {
                        (lines.sink)(&format!("{}: under way, {amount}", self.label));
                        lines.last_line = Some(now);
                    }
                    Some(last) if now.saturating_sub(last) >= MIN_INTERVAL => {
                        let due = match percent {
                            Some(p) => p >= lines.next_quarter && p < 100,
                            None => true,
                        };
                        if due {
                            (lines.sink)(&format!("{}: {amount}", self.label));
                            lines.last_line = Some(now);
                        }
                    }
                    _ => {}
                }
                if let Some(p) = percent {
                    while lines.next_quarter <= p && lines.next_quarter < 100 {
                        lines.next_quarter += 25;
                    }
                }
            }
            Style::Silent => {}
        }
    }

    /// "1200/2400 (50%)" or "12.0/48.0 MiB (25%)".
    fn amount(&self) -> String {
        let position = self.resumed.saturating_add(self.done);
        let show = |v: u64| match self.unit {
            Unit::Bytes => format!("{:.1}", mib(v)),
            Unit::Items => v.to_string(),
        };
        let suffix = if self.unit == Unit::Bytes { " MiB" } else { "" };
        match self.total.filter(|&t| t > 0) {
            Some(t) => format!(
                "{}/{}{suffix} ({}%)",
                show(position),
                show(t),
                position.saturating_mul(100) / t
            ),
            None => format!("{}{suffix}", show(position)),
        }
    }

    fn summary(&self) -> Summary {
        let seconds = match &self.style {
            #[cfg(feature = "cli")]
            Style::Bar(_, started) => started.elapsed().as_secs_f64(),
            Style::Lines(lines) => lines
                .clock
                .now()
                .saturating_sub(lines.started)
                .as_secs_f64(),
            Style::Silent => 0.0,
        };
        Summary {
            done: self.done,
            resumed: self.resumed,
            total: self.total,
            seconds,
        }
    }

    /// Ends the operation with the closing line `message` builds from the summary.
    pub fn finish_with(self, message: impl FnOnce(&Summary) -> String) {
        let summary = self.summary();
        match self.style {
            #[cfg(feature = "cli")]
            Style::Bar(bar, _) => {
                bar.finish_and_clear();
                eprintln!("{}", message(&summary));
            }
            Style::Lines(lines) => (lines.sink)(&message(&summary)),
            Style::Silent => {}
        }
    }

    /// Ends the operation with "`label`: N in T s (R/s)".
    pub fn finish(self) {
        let label = self.label.clone();
        let unit = self.unit;
        self.finish_with(|s| match unit {
            Unit::Bytes => format!("{label}: {}", s.bytes()),
            Unit::Items => format!(
                "{label}: {} in {:.1} s ({:.1}/s)",
                s.done,
                s.seconds,
                s.rate()
            ),
        })
    }

    /// Ends the operation with one line saying what failed and how far it got.
    pub fn fail(self, error: &dyn std::fmt::Display) {
        let label = self.label.clone();
        let amount = self.amount();
        self.finish_with(|s| {
            format!(
                "{label} failed after {:.1} s at {amount}: {error}",
                s.seconds
            )
        });
    }
}

#[cfg(feature = "cli")]
fn terminal_bar(label: &str, total: Option<u64>, unit: Unit) -> indicatif::ProgressBar {
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = match unit {
        Unit::Bytes => "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Items => "{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A clock that moves only when the test says so.
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn advance(&self, seconds: f64) {
            self.0
                .fetch_add((seconds * 1000.0) as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    /// `steps` increments of `units`, each after `seconds`.
    fn drive(p: &mut Progress, clock: &FakeClock, steps: usize, seconds: f64, units: u64) {
        for _ in 0..steps {
            clock.advance(seconds);
            p.inc(units);
        }
    }

    fn capture(
        label: &str,
        total: Option<u64>,
        unit: Unit,
    ) -> (Progress, FakeClock, Arc<Mutex<Vec<String>>>) {
        let clock = FakeClock::default();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let lines = lines.clone();
            Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_string()))
        };
        (
            Progress::lines(label, total, unit, Box::new(clock.clone()), sink),
            clock,
            lines,
        )
    }

    #[test]
    fn a_quick_download_prints_only_its_closing_line() {
        let (mut p, clock, lines) = capture("Downloading x.h5", Some(2_000_000), Unit::Bytes);
        drive(&mut p, &clock, 8, 0.0125, 250_000);
        p.finish();
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("Downloading x.h5: 1.9 MiB in 0.1 s"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_minute_long_extraction_prints_five_lines() {
        let (mut p, clock, lines) = capture("Extracting features", Some(2400), Unit::Items);
        // 2400 photos in 60 s, 16 at a time.
        drive(&mut p, &clock, 150, 0.4, 16);
        p.finish_with(|s| format!("Extracted {} photos in {:.1} s", s.done, s.seconds));
        let lines = lines.lock().unwrap();
        // Under way, 25 %, 50 %, 75 %, done.
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].contains("under way"), "{lines:?}");
        assert!(
            lines[1].contains("(25%)") || lines[1].contains("(26%)"),
            "{lines:?}"
        );
        assert_eq!(lines[4], "Extracted 2400 photos in 60.0 s");
    }

    #[test]
    fn a_cached_extraction_prints_one_line() {
        let (mut p, clock, lines) = capture("Extracting features", Some(2400), Unit::Items);
        drive(&mut p, &clock, 40, 0.005, 60);
        p.finish_with(|s| format!("{} photos from the cache in {:.1} s", s.done, s.seconds));
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            vec!["2400 photos from the cache in 0.2 s".to_string()]
        );
    }

    #[test]
    fn an_error_half_way_says_what_failed() {
        let (mut p, clock, lines) = capture("Downloading big.tgz", Some(100 << 20), Unit::Bytes);
        drive(&mut p, &clock, 50, 0.1, 1 << 20);
        p.fail(&"connection reset");
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("under way"), "{lines:?}");
        assert_eq!(
            lines[1],
            "Downloading big.tgz failed after 5.0 s at 50.0/100.0 MiB (50%): connection reset"
        );
    }

    #[test]
    fn an_unknown_total_prints_at_most_every_ten_seconds() {
        let (mut p, clock, lines) = capture("Downloading", None, Unit::Bytes);
        drive(&mut p, &clock, 300, 0.1, 1024);
        p.finish();
        // 30 s: under way at 2 s, then 12 s and 22 s, then done.
        assert_eq!(lines.lock().unwrap().len(), 4);
    }
}
