//! Progress reporting that reads well where the code runs.
//!
//! evcxr's Jupyter kernel streams stdout live but does not render `\r` or terminal bars, so
//! inside a notebook (and whenever stderr is not a terminal) progress is a plain stdout line
//! about every 5 %. In an interactive terminal it is an indicatif bar on stderr.
//! `FLOWERS_KIT_QUIET=1` silences it.

use std::io::IsTerminal;
use std::time::Instant;

/// What is being counted: drives the formatting of lines and bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Downloaded bytes, shown in MiB.
    Bytes,
    /// Items such as images, shown as counts.
    Items,
}

/// A running progress report for one task.
#[derive(Debug)]
pub struct Progress {
    label: String,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    started: Instant,
    style: Style,
}

#[derive(Debug)]
enum Style {
    Bar(indicatif::ProgressBar),
    /// Prints a line each time the done fraction reaches `next_percent`.
    Lines {
        next_percent: u64,
    },
    Silent,
}

/// How often line-style progress prints, in percent of the total.
const STEP_PERCENT: u64 = 5;

/// True inside an evcxr kernel, which sets `EVCXR_IS_RUNTIME` in the process that runs cells.
pub fn in_notebook() -> bool {
    std::env::var_os("EVCXR_IS_RUNTIME").is_some()
}

impl Progress {
    /// Starts reporting a task of `total` units (`None` when unknown, e.g. no Content-Length).
    pub fn new(label: &str, total: Option<u64>, unit: Unit) -> Self {
        let style = if std::env::var_os("FLOWERS_KIT_QUIET").is_some() {
            Style::Silent
        } else if !in_notebook() && std::io::stderr().is_terminal() {
            Style::Bar(terminal_bar(label, total, unit))
        } else {
            Style::Lines { next_percent: 0 }
        };
        Progress {
            label: label.to_string(),
            unit,
            total,
            done: 0,
            started: Instant::now(),
            style,
        }
    }

    /// Sets the amount done so far (a resumed download starts part-way).
    pub fn set_position(&mut self, done: u64) {
        self.done = done;
        self.report();
    }

    /// Marks `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.report();
    }

    fn report(&mut self) {
        match &mut self.style {
            Style::Bar(bar) => bar.set_position(self.done),
            Style::Lines { next_percent } => {
                let Some(total) = self.total.filter(|t| *t > 0) else {
                    return;
                };
                let percent = self.done.saturating_mul(100) / total;
                if percent >= *next_percent {
                    *next_percent = (percent / STEP_PERCENT + 1) * STEP_PERCENT;
                    let amount = match self.unit {
                        Unit::Bytes => format!("{:.1}/{:.1} MiB", mib(self.done), mib(total)),
                        Unit::Items => format!("{}/{}", self.done, total),
                    };
                    println!("{}: {amount} ({percent}%)", self.label);
                }
            }
            Style::Silent => {}
        }
    }

    /// Ends the task, printing a closing line with the elapsed time.
    pub fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        match self.style {
            Style::Bar(bar) => bar.finish_and_clear(),
            Style::Lines { .. } => println!("{}: done in {secs:.1} s", self.label),
            Style::Silent => {}
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

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
