//! Per-layer pull progress: indicatif bars when standard error is a terminal, one plain
//! line per event otherwise (a log file or a CI console gets no `\r` redraws or escape
//! codes). Each line is written whole under the sink's lock, so layers downloading at
//! once never interleave inside a line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Digest;

/// Where plain progress lines go.
pub type LineSink = Arc<Mutex<dyn Write + Send>>;

/// How a pull reports progress.
#[derive(Clone, Default)]
pub enum Progress {
    #[default]
    Off,
    /// Bars on standard error; for a terminal.
    Bars,
    /// `<layer>: <event>` lines, for anything that is not a terminal.
    Lines(LineSink),
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Progress::Off => "Off",
            Progress::Bars => "Bars",
            Progress::Lines(_) => "Lines",
        })
    }
}

/// One pull's reporter.
pub(crate) struct Reporter {
    bars: Option<(MultiProgress, ProgressStyle)>,
    lines: Option<LineSink>,
}

impl Reporter {
    pub(crate) fn new(progress: &Progress) -> Reporter {
        match progress {
            Progress::Off => Reporter {
                bars: None,
                lines: None,
            },
            Progress::Bars => {
                let style = ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}",
                )
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                Reporter {
                    bars: Some((multi, style)),
                    lines: None,
                }
            }
            Progress::Lines(sink) => Reporter {
                bars: None,
                lines: Some(sink.clone()),
            },
        }
    }

    /// The progress of one blob of `size` bytes.
    pub(crate) fn blob(&self, digest: &Digest, size: u64) -> BlobProgress {
        let name = short(digest);
        let bar = self.bars.as_ref().map(|(multi, style)| {
            let bar = multi.add(ProgressBar::new(size));
            bar.set_style(style.clone());
            bar.set_prefix(name.clone());
            bar
        });
        BlobProgress {
            bar,
            lines: self.lines.clone(),
            name,
            size,
        }
    }
}

/// The first 12 hex digits, as Docker shows layers.
pub(crate) fn short(digest: &Digest) -> String {
    digest.hex().chars().take(12).collect()
}

pub(crate) struct BlobProgress {
    bar: Option<ProgressBar>,
    lines: Option<LineSink>,
    name: String,
    size: u64,
}

impl BlobProgress {
    pub(crate) fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// The store had it (or another puller just brought it).
    pub(crate) fn present(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.line("already present");
    }

    pub(crate) fn downloaded(&self) {
        self.line(&format!("downloaded {}", HumanBytes(self.size)));
    }

    pub(crate) fn unpacking(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message("unpacking");
        }
    }

    /// A layer is unpacked.
    pub(crate) fn unpacked(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message("done");
        }
        self.line("unpacked");
    }

    /// A blob that is not unpacked (the config) is in.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self, event: &str) {
        if let Some(sink) = &self.lines {
            // A progress line that cannot be written is not a reason to fail the pull.
            if let Ok(mut out) = sink.lock() {
                let _ = out.write_all(format!("{}: {event}\n", self.name).as_bytes());
                let _ = out.flush();
            }
        }
    }
}
