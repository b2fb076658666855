//! (filled in by the work on issue 17)
