//! Where a node gets an image its store lacks, and when it asks: the executor's
//! [`ImageSource`] seam and the rule [`find`] applies to a service's `pull_policy`.
//!
//! On a cluster, a task may land on a node that never saw its image (imported, loaded
//! or pulled on another node; `berth up` pulls on the manager). The binary's source
//! fetches it from the managers, then from any node that holds it, over the cluster port
//! ([`super::peer::fetch`]); a single host has none, since `up` put every image in the
//! store before anything ran.

use super::images::Image;
use super::reference::Reference;
use super::store::ImageStore;
use super::ImageError;

/// Where the executor gets an image its node's store lacks.
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Brings the image `reference` names into this node's store, registered under
    /// `reference`, or says why not, naming every place it asked.
    fn fetch(&self, reference: &Reference) -> Result<(), ImageSourceError>;
}

/// Why an [`ImageSource`] brought no image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageSourceError {
    /// Every place asked answered, and none has the image.
    #[error("{0}")]
    NotFound(String),
    /// Some place could not be asked, or failed while sending it: asking again later
    /// may work.
    #[error("{0}")]
    Unavailable(String),
}

/// Why [`find`] has no image to give.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// Not in the store, and no source to fetch it from; or the store could not read
    /// it.
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error("image {image} is not on this node and could not be fetched: {source}")]
    Fetch {
        image: String,
        #[source]
        source: ImageSourceError,
    },
    #[error(
        "pull_policy always: image {image} could not be fetched again: {source} (with \
         pull_policy missing, this node would run its own copy)"
    )]
    Refresh {
        image: String,
        #[source]
        source: ImageSourceError,
    },
}

impl FindError {
    /// Whether trying again later may find the image: a source that could not be
    /// reached may answer next time; a store or sources without it will not.
    pub fn may_succeed_later(&self) -> bool {
        match self {
            FindError::Store(_) => false,
            FindError::Fetch { source, .. } | FindError::Refresh { source, .. } => {
                matches!(source, ImageSourceError::Unavailable(_))
            }
        }
    }
}

/// The image `reference` names in `store`, fetched from `source` first when
/// `pull_policy` (a service's, as the loader normalized it) says so:
/// - `always`: fetched even when present, so that the node runs what the cluster has
///   under that name now (`berth up` pulled it on the manager);
/// - anything else (`missing`, the default, `never`, `daily`, `every_...`, `build`):
///   fetched only when missing, since a node keeps no record of when it last fetched.
///   `never` too: it forbids a registry pull, and a source is other nodes of the
///   cluster, never a registry (`berth up` accepts a `never` image that some node has,
///   which the node that runs it must then fetch).
///
/// Without a source the store's answer stands.
pub fn find(
    store: &ImageStore,
    reference: &Reference,
    pull_policy: Option<&str>,
    source: Option<&dyn ImageSource>,
) -> Result<Image, FindError> {
    let found = store.image(reference);
    let missing = matches!(found, Err(ImageError::NotFound(_)));
    let Some(source) = source else {
        return Ok(found?);
    };
    let fetch = pull_policy == Some("always") || missing;
    if !fetch {
        return Ok(found?);
    }
    if let Err(source) = source.fetch(reference) {
        let image = reference.familiar();
        return Err(if missing {
            FindError::Fetch { image, source }
        } else {
            FindError::Refresh { image, source }
        });
    }
    Ok(store.image(reference)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;

    /// A source that imports the busybox tar under the name asked for, or fails as told;
    /// it counts its calls.
    #[derive(Debug)]
    struct Fake {
        tar: PathBuf,
        store: ImageStore,
        fails: Option<ImageSourceError>,
        calls: Mutex<usize>,
    }

    impl ImageSource for Fake {
        fn fetch(&self, reference: &Reference) -> Result<(), ImageSourceError> {
            *self.calls.lock().expect("calls") += 1;
            if let Some(e) = &self.fails {
                return Err(e.clone());
            }
            crate::image::import(&self.store, &self.tar, &reference.to_string())
                .map(drop)
                .map_err(|e| ImageSourceError::Unavailable(e.to_string()))
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Image,
        /// The store's not-found error, as without a source.
        NotFound,
        Fetch,
        Refresh,
    }

    #[test]
    fn the_pull_policy_decides_whether_the_source_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = testkit::busybox_rootfs_tar(dir.path()).expect("busybox rootfs tar");
        let not_found = ImageSourceError::NotFound("no node has it".into());
        let unreachable = ImageSourceError::Unavailable("m1: connection refused".into());
        // (pull_policy, image already in the store, a source and how it fails,
        //  whether the source is asked, what comes out)
        type Case = (
            Option<&'static str>,
            bool,
            Option<Option<ImageSourceError>>,
            bool,
            Want,
        );
        let cases: Vec<Case> = vec![
            // No source: the store's answer, whatever the policy.
            (None, false, None, false, Want::NotFound),
            (Some("always"), true, None, false, Want::Image),
            // Missing (the default): asked only for an image the node lacks.
            (None, false, Some(None), true, Want::Image),
            (Some("missing"), true, Some(None), false, Want::Image),
            (Some("daily"), false, Some(None), true, Want::Image),
            (
                None,
                false,
                Some(Some(not_found.clone())),
                true,
                Want::Fetch,
            ),
            // Never (no registry pull): asked only for an image the node lacks, as the
            // source is the cluster's nodes.
            (Some("never"), false, Some(None), true, Want::Image),
            (Some("never"), true, Some(None), false, Want::Image),
            (
                Some("never"),
                false,
                Some(Some(not_found.clone())),
                true,
                Want::Fetch,
            ),
            // Always: asked even for an image the node has, and a failure says so.
            (Some("always"), true, Some(None), true, Want::Image),
            (
                Some("always"),
                true,
                Some(Some(unreachable.clone())),
                true,
                Want::Refresh,
            ),
            (
                Some("always"),
                false,
                Some(Some(unreachable)),
                true,
                Want::Fetch,
            ),
        ];
        for (i, (policy, present, source, asked, want)) in cases.into_iter().enumerate() {
            let case = format!("case {i}: {policy:?}, present {present}, source {source:?}");
            let store = ImageStore::open(&dir.path().join(format!("state{i}"))).expect("store");
            let reference = Reference::parse("app:1").expect("reference");
            if present {
                crate::image::import(&store, &tar, "app:1").expect("import");
            }
            let fake = source.map(|fails| Fake {
                tar: tar.clone(),
                store: store.clone(),
                fails,
                calls: Mutex::new(0),
            });
            let got = find(
                &store,
                &reference,
                policy,
                fake.as_ref().map(|f| f as &dyn ImageSource),
            );
            let calls = fake.as_ref().map_or(0, |f| *f.calls.lock().expect("calls"));
            assert_eq!(calls, usize::from(asked), "{case}");
            let got_want = match &got {
                Ok(image) => {
                    assert_eq!(image.reference, reference, "{case}");
                    Want::Image
                }
                Err(FindError::Store(ImageError::NotFound(_))) => Want::NotFound,
                Err(FindError::Fetch { .. }) => Want::Fetch,
                Err(FindError::Refresh { .. }) => Want::Refresh,
                Err(e) => panic!("{case}: {e}"),
            };
            assert_eq!(got_want, want, "{case}: {got:?}");
        }
    }

    #[test]
    fn a_failed_fetch_says_what_was_tried_and_whether_to_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let reference = Reference::parse("app:1").expect("reference");
        for (fails, retry) in [
            (
                ImageSourceError::NotFound("no node has it (m1: not found)".into()),
                false,
            ),
            (
                ImageSourceError::Unavailable("m1: connection refused".into()),
                true,
            ),
        ] {
            let fake = Fake {
                tar: PathBuf::new(),
                store: store.clone(),
                fails: Some(fails.clone()),
                calls: Mutex::new(0),
            };
            let err = find(&store, &reference, None, Some(&fake)).expect_err("no image");
            let text = err.to_string();
            assert!(
                text.starts_with("image app:1 is not on this node and could not be fetched: "),
                "{text}"
            );
            assert!(text.ends_with(&fails.to_string()), "{text}");
            assert_eq!(err.may_succeed_later(), retry, "{text}");
        }
    }
}
