//! berth's container runtime: an OCI bundle in, an isolated, limited, hardened
//! container out. (Being written.)
