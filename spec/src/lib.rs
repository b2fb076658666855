//! berth's Compose-spec model: load, interpolate, merge, validate and normalize stack
//! files into a [`Stack`].
//!
//! Architecture invariant: this crate does no I/O except reading the files it is asked
//! to load (the Compose files, and the env files, extended or included files and
//! seccomp profiles they name), and it never panics on input. The process environment
//! and working directory come in through [`LoadOptions`].
//!
//! Start reading at [`load()`]; the pipeline is described in the `load` module.

pub mod canonical;
pub mod constraint;
pub(crate) mod decode;
pub mod devices;
pub mod diag;
pub mod dotenv;
pub mod generic;
pub mod interpolate;
mod load;
mod merge;
pub mod model;
pub mod names;
pub mod namespaces;
mod origin;
mod profiles;
mod references;
pub mod security;
pub mod short_syntax;
pub mod task;
pub mod units;
mod validate;
pub mod yaml;

pub use diag::{Diagnostic, LoadError, Severity};
pub use load::{load, LoadOptions, Project, DEFAULT_FILES};
pub use model::Stack;
pub use validate::{start_first_clash, DEFAULT_MONITOR};
