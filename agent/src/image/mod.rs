//! The local image store: content-addressed blobs, image references, and safe layer
//! unpacking. (Being written.)
