//! `berth image ...`: the local image store (import, load, ls, rm, inspect).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent::image::{self, Image, ImageStore, Reference};
use clap::Subcommand;

use super::{write_stderr, write_stdout};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Create an image from a root filesystem tar (like docker import)
    Import {
        /// The rootfs tar (plain, gzip or zstd)
        rootfs: PathBuf,
        /// The image's name, NAME[:TAG]
        name: String,
    },
    /// Load images from an OCI image layout (directory or tar) or a docker save archive
    Load {
        /// Repository for images the archive tags without a name (NAME, or NAME:TAG for untagged ones)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The archive file or layout directory
        path: PathBuf,
    },
    /// Pull an image from a registry (plain HTTP only for loopback and --insecure-registry)
    Pull {
        /// Registry that may be reached over plain HTTP (host[:port]; repeatable)
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
        /// User name for basic authentication (the password is read from standard input)
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the password from standard input
        #[arg(long = "password-stdin", requires = "username")]
        password_stdin: bool,
        /// No progress bars
        #[arg(short, long)]
        quiet: bool,
        /// The image, NAME[:TAG] or NAME@DIGEST
        name: String,
    },
    /// List images
    #[command(visible_alias = "list")]
    Ls,
    /// Remove images; blobs and layers no image uses any more are deleted
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NAME[:TAG]")]
        names: Vec<String>,
    },
    /// Show images as JSON
    Inspect {
        #[arg(required = true, value_name = "NAME[:TAG]")]
        names: Vec<String>,
    },
}

pub fn run(state_dir: &Path, cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(state_dir)?;
    match cmd {
        ImageCommand::Import { rootfs, name } => {
            let image = image::import(&store, rootfs, name)?;
            write_stdout(&format!("{}\n", image.id()))?;
        }
        ImageCommand::Load { name, path } => {
            let images = image::load(&store, path, name.as_deref())?;
            let text: String = images
                .iter()
                .map(|i| format!("Loaded image: {}\n", i.reference.familiar()))
                .collect();
            write_stdout(&text)?;
        }
        ImageCommand::Pull {
            insecure,
            username,
            password_stdin,
            quiet,
            name,
        } => {
            let reference = Reference::parse(name)?;
            let credentials = match (username, password_stdin) {
                (Some(user), true) => {
                    let mut password = String::new();
                    std::io::stdin().read_line(&mut password)?;
                    image::pull::Credentials::Basic {
                        username: user.clone(),
                        password: password.trim_end_matches(['\n', '\r']).to_string(),
                    }
                }
                _ => image::pull::Credentials::Auto,
            };
            let opts = image::pull::PullOptions {
                credentials,
                insecure_registries: insecure.clone(),
                progress: progress_mode(*quiet),
                docker_config_dir: None,
            };
            let pulled = image::pull::pull(&store, &reference, &opts)?;
            write_stdout(&format!(
                "Pulled {} ({})\n",
                pulled.reference.familiar(),
                pulled.manifest_digest
            ))?;
        }
        ImageCommand::Ls => write_stdout(&table(&store.images()?))?,
        ImageCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                match Reference::parse(name)
                    .map_err(image::ImageError::from)
                    .and_then(|r| store.remove_image(&r).map(|swept| (r, swept)))
                {
                    Ok((r, swept)) => {
                        let mut text = format!("Untagged: {}\n", r.familiar());
                        if swept.deferred {
                            text.push_str(
                                "Unused blobs and layers are kept for now: a pull is in progress; \
                                 the next image rm deletes them\n",
                            );
                        } else if swept.blobs + swept.layers > 0 {
                            text.push_str(&format!(
                                "Deleted: {} blobs, {} layers\n",
                                swept.blobs, swept.layers
                            ));
                        }
                        write_stdout(&text)?;
                    }
                    Err(e) => {
                        failed = true;
                        write_stderr(&format!("berth: {e}\n"));
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCommand::Inspect { names } => {
            let images = names
                .iter()
                .map(|n| Ok(store.image(&Reference::parse(n)?)?))
                .collect::<anyhow::Result<Vec<Image>>>()?;
            write_stdout(&format!("{}\n", serde_json::to_string_pretty(&images)?))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bars redraw with `\r` and escape codes: only for a terminal. A log or a pipe gets
/// one plain line per layer event instead.
pub(super) fn progress_mode(quiet: bool) -> image::pull::Progress {
    if quiet {
        image::pull::Progress::Off
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        image::pull::Progress::Bars
    } else {
        image::pull::Progress::Lines(std::sync::Arc::new(
            std::sync::Mutex::new(std::io::stderr()),
        ))
    }
}

/// `docker images`' table: REPOSITORY TAG IMAGE ID SIZE.
fn table(images: &[Image]) -> String {
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    ]];
    for i in images {
        rows.push([
            i.reference.familiar_repository(),
            i.reference
                .tag
                .clone()
                .unwrap_or_else(|| "<none>".to_string()),
            i.id().short().to_string(),
            human_size(i.size()),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Sizes as Docker prints them: decimal units, three significant digits (`4.26MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_like_docker() {
        for (bytes, want) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (1234, "1.23kB"),
            (4_260_000, "4.26MB"),
            (77_800_000, "77.8MB"),
            (123_456_789, "123MB"),
        ] {
            assert_eq!(human_size(bytes), want);
        }
    }
}
