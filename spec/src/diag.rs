//! Diagnostics: what the loader tells a user about their files.
//!
//! Every problem names the file and the path inside it
//! (`compose.yaml: services.web.ports[0]: port 70000 is out of range (1-65535)`), so a
//! user can go straight to the line. The loader collects all of them before failing, so
//! one run shows every mistake.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (or as discovered), e.g. `compose.yaml`.
    pub file: String,
    /// Dotted path inside the file, e.g. `services.web.ports[0]`; empty for the file itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.path.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.path, self.message),
            (false, true) => write!(f, "{}: {}", self.file, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.file, self.path, self.message),
        }
    }
}

/// A sink for diagnostics, carried through every stage of a load.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(&mut self, file: &str, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, file, path, message.into());
    }

    pub fn warn(&mut self, file: &str, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, file, path, message.into());
    }

    fn push(&mut self, severity: Severity, file: &str, path: &str, message: String) {
        let d = Diagnostic {
            severity,
            file: file.to_string(),
            path: path.to_string(),
            message,
        };
        // The same problem can be seen twice (a file is checked alone, then merged);
        // a user wants to read it once.
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            self.push(d.severity, &d.file, &d.path, d.message);
        }
    }

    /// Keeps only the errors: used where the same tree is checked again later and the
    /// warnings will come from that later pass.
    pub fn errors_only(self) -> Diagnostics {
        let items = self
            .items
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        Diagnostics { items }
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}

/// A failed load: every error found, and the warnings seen on the way.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl LoadError {
    pub fn from_diagnostics(diags: Diagnostics) -> Self {
        let (errors, warnings) = diags
            .into_vec()
            .into_iter()
            .partition(|d| d.severity == Severity::Error);
        LoadError { errors, warnings }
    }

    /// A load error with a single problem, for failures that stop everything (a file
    /// that cannot be read, say).
    pub fn single(file: &str, path: &str, message: impl Into<String>) -> Self {
        let mut d = Diagnostics::default();
        d.error(file, path, message);
        LoadError::from_diagnostics(d)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Builds the dotted paths used in diagnostics. The decoders build one for every value
/// they read, so these concatenate directly rather than through `format!` (which was
/// about 7% of loading a large file).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        return key.to_string();
    }
    let mut joined = String::with_capacity(path.len() + 1 + key.len());
    joined.push_str(path);
    joined.push('.');
    joined.push_str(key);
    joined
}

pub(crate) fn index(path: &str, i: usize) -> String {
    // `usize::to_string` skips the formatting machinery.
    let digits = i.to_string();
    let mut indexed = String::with_capacity(path.len() + digits.len() + 2);
    indexed.push_str(path);
    indexed.push('[');
    indexed.push_str(&digits);
    indexed.push(']');
    indexed
}
