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
    oci_layout_with_layers(&[rootfs_tar], dir, tag)
}

/// [`oci_layout`] with several layers, bottom first (each a tar, stored gzipped).
pub fn oci_layout_with_layers(layer_tars: &[&Path], dir: &Path, tag: &str) -> io::Result<()> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;

    let mut diff_ids = Vec::new();
    let mut layers = Vec::new();
    for tar_path in layer_tars {
        let tar = fs::read(tar_path)?;
        diff_ids.push(format!("\"sha256:{}\"", hex::encode(Sha256::digest(&tar))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar)?;
        let layer = gz.finish()?;
        let layer_hex = put_blob(dir, &layer)?;
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer_hex}","size":{}}}"#,
            layer.len()
        ));
    }

    let config = format!(
        r#"{{"created":"2024-01-01T00:00:00Z","architecture":"{}","os":"linux","config":{CONFIG},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[{{"created":"2024-01-01T00:00:00Z","created_by":"testkit::oci_layout"}}]}}"#,
        arch(),
        diff_ids.join(",")
    );
    let config_hex = put_blob(dir, config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layers.join(",")
    );
    let manifest_hex = put_blob(dir, manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    fs::write(dir.join("index.json"), index)
}
