//! Image references as Docker writes them, normalized the way Docker does:
//! `busybox` is `docker.io/library/busybox:latest`, `localhost:5000/x/y:tag` keeps its
//! registry, and `name@sha256:...` pins a manifest digest. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// The registry a name without one belongs to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalized image reference. At least one of `tag` and `digest` is set: a
/// reference with neither gets the tag `latest` when parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with its port if any: `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path in the registry: `library/busybox`, `x/y`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    pub text: String,
    pub reason: String,
}

impl Reference {
    /// Parses and normalizes a reference as `docker pull` would.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(fail("the reference is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| fail(&format!("bad digest: {}", e.reason)))?,
                ),
            ),
            None => (text, None),
        };
        // The first component is a registry if it looks like a host (Docker's rule).
        let (domain, remainder) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, remainder)
            }
            _ => (DEFAULT_DOMAIN, rest),
        };
        let (name, tag) = match remainder.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (remainder, None),
        };
        validate_domain(domain).map_err(|r| fail(&r))?;
        if name.is_empty() {
            return Err(fail("the repository name is empty"));
        }
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(fail("repository name must be lowercase"));
        }
        for component in name.split('/') {
            validate_path_component(component).map_err(|r| fail(&r))?;
        }
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| fail(&r))?;
        }
        let domain = if domain == LEGACY_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !name.contains('/') {
            format!("{OFFICIAL_PREFIX}{name}")
        } else {
            name.to_string()
        };
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(fail(&format!(
                "repository name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the repository without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as `docker images` shows it: `busybox` for
    /// `docker.io/library/busybox`, `user/app` for `docker.io/user/app`.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_PREFIX)
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        }
    }

    /// The reference as a user writes it: `busybox:latest`, `localhost:5000/x:1`.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_repository();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
        out
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        validate_tag(tag).map_err(|reason| ReferenceError {
            text: tag.to_string(),
            reason,
        })?;
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // An IPv6 address: [::1]:5000
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {domain:?} has an unclosed '['"))?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("registry {domain:?} is not a valid IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(format!("registry {domain:?} is not host[:port]")),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if !domain.starts_with('[') {
        if host.is_empty() {
            return Err(format!("registry {domain:?} has an empty host name"));
        }
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("registry host {host:?} is not a valid host name"));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) || port.len() > 5 {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, Docker's path component grammar.
fn validate_path_component(c: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "repository path component {c:?} must be lowercase letters and digits, \
             separated by '.', '_', '__' or dashes"
        ))
    };
    if c.is_empty() {
        return Err("repository name has an empty path component".to_string());
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return bad();
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let ok = chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-')
        && tag.len() <= MAX_TAG_LEN;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be up to {MAX_TAG_LEN} letters, digits, '_', '.' or '-', \
             not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let digest_ref = format!("busybox@{D}");
        let tagged_digest = format!("localhost:5000/a/b:v1@{D}");
        let cases: &[(&str, &str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest", "busybox"),
            ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox"),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "busybox",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox",
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox",
            ),
            ("user/app:v2", "docker.io/user/app:v2", "user/app"),
            ("localhost/app", "localhost/app:latest", "localhost/app"),
            (
                "localhost:5000/x/y:tag",
                "localhost:5000/x/y:tag",
                "localhost:5000/x/y",
            ),
            (
                "127.0.0.1:5000/x",
                "127.0.0.1:5000/x:latest",
                "127.0.0.1:5000/x",
            ),
            ("[::1]:5000/x:1", "[::1]:5000/x:1", "[::1]:5000/x"),
            (
                "ghcr.io/o/r/s:v1.2-rc_3",
                "ghcr.io/o/r/s:v1.2-rc_3",
                "ghcr.io/o/r/s",
            ),
            ("Registry/app", "Registry/app:latest", "Registry/app"),
            (
                "a__b/c-d--e.f",
                "docker.io/a__b/c-d--e.f:latest",
                "a__b/c-d--e.f",
            ),
            (
                &digest_ref,
                &format!("docker.io/library/busybox@{D}"),
                "busybox",
            ),
            (
                &tagged_digest,
                &format!("localhost:5000/a/b:v1@{D}"),
                "localhost:5000/a/b",
            ),
        ];
        for (input, full, familiar) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *full, "{input}");
            assert_eq!(r.familiar_repository(), *familiar, "{input}");
            assert_eq!(Reference::parse(full).unwrap(), r, "{input} round trip");
        }
    }

    #[test]
    fn rejects_with_reasons() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("BusyBox", "lowercase"),
            ("busybox:", "tag \"\""),
            ("busybox:-x", "tag \"-x\""),
            ("busybox:.x", "tag \".x\""),
            ("busybox@sha256:abc", "bad digest"),
            ("busybox@md5:abc", "bad digest"),
            ("a//b", "empty path component"),
            ("a/b/", "empty path component"),
            ("-a", "path component \"-a\""),
            ("a_-b", "path component \"a_-b\""),
            ("a___b", "path component \"a___b\""),
            ("a..b", "path component \"a..b\""),
            ("../etc", "not a valid host name"),
            ("local-:5000/x", "not a valid host name"),
            ("localhost:50a/x", "port \"50a\""),
            ("[::1/x", "unclosed"),
            ("a b", "path component \"a b\""),
        ];
        for (input, reason) in cases {
            let e = Reference::parse(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.contains(reason), "{input}: {msg}");
            assert!(msg.starts_with("invalid image reference"), "{msg}");
        }
        let long = "a".repeat(300);
        assert!(Reference::parse(&long)
            .unwrap_err()
            .reason
            .contains("longer"));
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }

    #[test]
    fn retags() {
        let r = Reference::parse("busybox:1").unwrap();
        assert_eq!(
            r.with_tag("2").unwrap().to_string(),
            "docker.io/library/busybox:2"
        );
        assert!(r.with_tag("bad tag").is_err());
    }
}
