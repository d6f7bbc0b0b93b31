//! A one-line progress bar on stderr while a scenario builds or waits for objects.
//!
//! On a terminal the bar is redrawn in place a few times a second; otherwise
//! (CI logs) a plain counter is printed at every quarter, so logs stay short.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// Counts `done` out of `total` for one labelled step.
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    last_drawn: Option<Instant>,
    last_quarter: usize,
    terminal: bool,
}

impl Progress {
    /// Starts counting towards `total` and shows the empty counter.
    pub fn new(label: impl Into<String>, total: usize) -> Progress {
        let mut progress = Progress {
            label: label.into(),
            total,
            done: 0,
            started: Instant::now(),
            last_drawn: None,
            last_quarter: 0,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw();
        progress
    }

    /// Counts one more item done.
    pub fn inc(&mut self) {
        self.set(self.done + 1);
    }

    /// Sets how many items are done.
    pub fn set(&mut self, done: usize) {
        self.done = done.min(self.total);
        let due = if self.terminal {
            self.last_drawn
                .is_none_or(|drawn| drawn.elapsed() >= REDRAW_EVERY)
        } else {
            // The last quarter is left to `finish`, which adds the time taken.
            self.quarter() > self.last_quarter && self.quarter() < 4
        };
        if due {
            self.draw();
        }
    }

    /// Ends the line with the final count and how long the step took.
    pub fn finish(mut self) {
        self.last_quarter = 4;
        let line = format!(
            "{}: {}/{} in {:.1} s",
            self.label,
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        self.write(&line, true);
    }

    fn quarter(&self) -> usize {
        (self.done * 4).checked_div(self.total).unwrap_or(4)
    }

    fn draw(&mut self) {
        self.last_drawn = Some(Instant::now());
        self.last_quarter = self.quarter();
        let line = if self.terminal {
            format!(
                "{}: [{}] {}/{}",
                self.label,
                bar(self.done, self.total),
                self.done,
                self.total
            )
        } else {
            format!("{}: {}/{}", self.label, self.done, self.total)
        };
        self.write(&line, !self.terminal);
    }

    fn write(&self, line: &str, end_line: bool) {
        let mut stderr = std::io::stderr().lock();
        let start = if self.terminal { "\r\x1b[2K" } else { "" };
        let end = if end_line { "\n" } else { "" };
        // A lost progress line is not worth failing the benchmark for.
        let _ = write!(stderr, "{start}  {line}{end}");
        let _ = stderr.flush();
    }
}

/// `done` out of `total` as [`BAR_WIDTH`] characters of `#` and `.`.
fn bar(done: usize, total: usize) -> String {
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(BAR_WIDTH);
    format!("{}{}", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 10), ".".repeat(BAR_WIDTH));
        assert_eq!(bar(5, 10), format!("{}{}", "#".repeat(15), ".".repeat(15)));
        assert_eq!(bar(10, 10), "#".repeat(BAR_WIDTH));
        assert_eq!(bar(0, 0), "#".repeat(BAR_WIDTH));
    }
}
