//! Progress on the terminal: a bar per long phase, and one line per finished phase. Bars draw
//! only on a terminal; the lines go to stderr either way, so logs of CI runs show progress too.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            multi: MultiProgress::new(),
        }
    }

    /// A bar counting to `len`.
    pub fn bar(&self, len: usize, what: &str) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>28} [{bar:30}] {pos:>7}/{len:7} {per_sec:>12} {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self
            .multi
            .add(ProgressBar::new(len as u64).with_style(style));
        bar.set_prefix(what.to_owned());
        bar
    }

    /// A line above the bars (or on stderr when there are none).
    pub fn note(&self, line: impl AsRef<str>) {
        if self.multi.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            let _ = self.multi.println(line.as_ref());
        }
    }

    /// Removes a finished bar so the next phase starts on a clean screen.
    pub fn done(&self, bar: ProgressBar) {
        bar.finish_and_clear();
        self.multi.remove(&bar);
    }
}
