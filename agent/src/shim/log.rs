//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"time":"<RFC 3339, nanoseconds>","stream":"stdout|stderr","log":"<line>\n"}`,
//! in `log.json`, rotated by size to `log.json.1` (newer) ... `log.json.<N-1>`
//! (oldest), as Docker's `max-size` / `max-file` options do.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LogOptions, ShimError};

/// A line longer than this is written as several entries (Docker splits at 16 KiB too).
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Which stream a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of the log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub time: String,
    pub stream: Stream,
    pub log: String,
}

pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join("log.json")
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("log.json.{n}"))
}

/// Appends entries to `log.json`, rotating it when the next entry would pass
/// `max_size`.
#[derive(Debug)]
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl LogWriter {
    pub(crate) fn open(dir: &Path, max_size: u64, max_files: u32) -> std::io::Result<LogWriter> {
        let file = open_append(&log_path(dir))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
        })
    }

    /// Writes one entry: `line` is a complete line (its newline included) or a part of
    /// a longer one.
    pub(crate) fn write(&mut self, stream: Stream, line: &[u8]) -> std::io::Result<()> {
        let entry = LogEntry {
            time: now_rfc3339(),
            stream,
            log: String::from_utf8_lossy(line).into_owned(),
        };
        let mut json = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        json.push(b'\n');
        if self.size > 0 && self.size + json.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&json)?;
        self.size += json.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.file.seek(std::io::SeekFrom::Start(0))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files - 1).rev() {
            let from = rotated(&self.dir, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.dir, n + 1))?;
            }
        }
        std::fs::rename(log_path(&self.dir), rotated(&self.dir, 1))?;
        self.file = open_append(&log_path(&self.dir))?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Splits a stream's bytes into log lines, keeping a partial last line for later.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds `data`; returns the complete lines (and pieces of over-long lines).
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match self.pending.iter().position(|&b| b == b'\n') {
                Some(i) if i < MAX_LINE => {
                    out.push(self.pending.drain(..=i).collect());
                }
                _ if self.pending.len() >= MAX_LINE => {
                    out.push(self.pending.drain(..MAX_LINE).collect());
                }
                _ => return out,
            }
        }
    }

    /// What is left at end of stream (a last line without a newline).
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// Now, as RFC 3339 in UTC with nanoseconds: `2024-05-01T12:00:00.123456789Z`.
pub(crate) fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Unix seconds and nanoseconds as RFC 3339 in UTC, the log's timestamp format.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads the log files oldest first, then (with `follow`) the current file as it
/// grows, across rotations, until `running` says the container has stopped.
pub(crate) fn read(
    dir: &Path,
    opts: LogOptions,
    sink: &mut dyn FnMut(&LogEntry) -> std::io::Result<()>,
    running: &mut dyn FnMut() -> bool,
) -> Result<(), ShimError> {
    let io = |e: std::io::Error| ShimError::io(format!("read the log in {}", dir.display()), e);
    let mut files: Vec<PathBuf> = (1..1000)
        .map(|n| rotated(dir, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    let current = log_path(dir);
    let mut entries = Vec::new();
    for f in &files {
        if let Ok(file) = File::open(f) {
            read_lines(&mut BufReader::new(file), &mut |e| {
                entries.push(e);
                Ok(())
            })
            .map_err(io)?;
        }
    }
    let mut reader = match File::open(&current) {
        Ok(f) => Some(BufReader::new(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if let Some(r) = reader.as_mut() {
        read_lines(r, &mut |e| {
            entries.push(e);
            Ok(())
        })
        .map_err(io)?;
    }
    let skip = opts.tail.map_or(0, |n| entries.len().saturating_sub(n));
    for e in &entries[skip..] {
        sink(e).map_err(io)?;
    }
    if !opts.follow {
        return Ok(());
    }
    loop {
        // Decide before reading, so the last lines written before the exit are read.
        let still_running = running();
        if let Some(r) = reader.as_mut() {
            read_lines(r, &mut |e| sink(&e)).map_err(io)?;
        }
        // Rotated away: finish the old file (done above), then follow the new one.
        let current_ino = std::fs::metadata(&current).ok().map(|m| m.ino());
        let open_ino = reader
            .as_ref()
            .and_then(|r| r.get_ref().metadata().ok())
            .map(|m| m.ino());
        if current_ino.is_some() && current_ino != open_ino {
            reader = File::open(&current).ok().map(BufReader::new);
            continue;
        }
        if !still_running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `f` for each complete line from the reader's position; a partial last
/// line (being written) is left for the next call.
fn read_lines(
    r: &mut BufReader<File>,
    f: &mut dyn FnMut(LogEntry) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            r.seek_relative(-(n as i64))?;
            return Ok(());
        }
        // A line that is not an entry (cut short by a crash) is skipped.
        if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) {
            f(entry)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_nanoseconds() {
        assert_eq!(format_rfc3339(0, 5), "1970-01-01T00:00:00.000000005Z");
        assert_eq!(
            format_rfc3339(1_709_251_199, 123_000_000),
            "2024-02-29T23:59:59.123000000Z"
        );
        assert_eq!(
            format_rfc3339(951_782_400, 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"a\nb"), vec![b"a\n".to_vec()]);
        assert_eq!(b.push(b"c\n\n"), vec![b"bc\n".to_vec(), b"\n".to_vec()]);
        let long = vec![b'x'; MAX_LINE + 10];
        let parts = b.push(&long);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].len(), MAX_LINE);
        assert_eq!(b.finish(), Some(vec![b'x'; 10]));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 1024, 3).unwrap();
        for i in 0..200 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["log.json", "log.json.1", "log.json.2"]);
        for n in &names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 1024);
        }
        let mut seen = Vec::new();
        read(
            dir.path(),
            LogOptions::default(),
            &mut |e| {
                seen.push(e.log.clone());
                Ok(())
            },
            &mut || false,
        )
        .unwrap();
        // The newest lines survive, in order.
        assert_eq!(seen.last().unwrap(), "line 199\n");
        let first: usize = seen[0]
            .trim()
            .strip_prefix("line ")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(seen.len(), 200 - first);
    }
}
