//! Real OCI image layouts for tests, written from a rootfs tar, so that loading (and,
//! later, `skopeo copy oci:DIR:TAG docker://...` into a test registry) has a genuine
//! image to work with. `umoci stat` and `skopeo inspect` accept what this writes.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The config every layout made here carries, so tests can check that a loaded
/// image keeps it: `Env`, `Entrypoint`, `Cmd`, `WorkingDir`, `User`, `ExposedPorts`,
/// `Labels` and a `Healthcheck`.
pub const CONFIG: &str = r#"{"User":"app","ExposedPorts":{"8080/tcp":{}},"Env":["PATH=/bin","GREETING=hello"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo $GREETING"],"WorkingDir":"/home/app","Labels":{"org.berth.test":"yes"},"Healthcheck":{"Test":["CMD","true"],"Interval":2000000000,"Retries":3}}"#;

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> io::Result<String> {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(dir.join("blobs/sha256").join(&hex), bytes)?;
    Ok(hex)
}

/// Writes an OCI image layout in `dir` (created if missing) holding one image, tagged
/// `tag` (`org.opencontainers.image.ref.name`), whose single gzip layer is
/// `rootfs_tar` and whose config is [`CONFIG`].
pub fn oci_layout(rootfs_tar: &Path, dir: &Path, tag: &str) -> io::Result<()> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;

    let tar = fs::read(rootfs_tar)?;
    let diff_id = hex::encode(Sha256::digest(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;
    let layer_hex = put_blob(dir, &layer)?;

    let config = format!(
        r#"{{"created":"2024-01-01T00:00:00Z","architecture":"{}","os":"linux","config":{CONFIG},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}},"history":[{{"created":"2024-01-01T00:00:00Z","created_by":"testkit::oci_layout"}}]}}"#,
        arch()
    );
    let config_hex = put_blob(dir, config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer_hex}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_hex = put_blob(dir, manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    fs::write(dir.join("index.json"), index)
}
