//! Images and Compose services turned into containers on the real kernel, as root:
//! each test imports or loads a busybox image into a temporary store, prepares a
//! container (overlayfs rootfs + spec) from a `spec::model::Service`, runs it with
//! `runtime::run`, and checks what the container saw and what it left on the host.
//!
//! `Ctr` unmounts the rootfs and removes the container's directory and cgroup when
//! dropped, even when the test fails half-way; the temporary state directory (store,
//! volumes) goes with the `Fixture`, which outlives its containers.

// Test helpers report failure by panicking (clippy.toml allows unwrap only in #[test]).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use agent::container::{self, ContainerContext, ContainerError};
use agent::image::{self, Image, ImageStore};
use agent::runtime::{self, ExitReport, RunOptions, RuntimeError, Stdio};
use spec::model::{
    BindOptions, FileMount, FileObject, Mount, MountType, Service, TmpfsOptions, VolumeOptions,
};

struct Fixture {
    tmp: tempfile::TempDir,
    store: ImageStore,
    image: Image,
}

impl Fixture {
    /// The plain busybox image (no config: no user, command, env).
    fn busybox() -> Fixture {
        Fixture::with_rootfs(|_| {})
    }

    /// A busybox image whose rootfs `edit` changed first.
    fn with_rootfs(edit: impl FnOnce(&Path)) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src/rootfs");
        testkit::busybox_rootfs(&root).unwrap();
        edit(&root);
        let tar = tmp.path().join("src/rootfs.tar");
        testkit::tar_dir(&root, &tar).unwrap();
        let store = ImageStore::open(&tmp.path().join("state")).unwrap();
        let image = image::import(&store, &tar, "test/busybox:1").unwrap();
        Fixture { tmp, store, image }
    }

    /// An OCI layout image of `layers` (bottom first) with testkit's config
    /// (User app, Entrypoint sh -c, Cmd echo $GREETING, WorkingDir /home/app).
    fn layered(layers: &[PathBuf]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        testkit::oci::oci_layout_with_layers(&refs, &layout, "1").unwrap();
        let store = ImageStore::open(&tmp.path().join("state")).unwrap();
        let image = image::load(&store, &layout, Some("test/layered:1"))
            .unwrap()
            .remove(0);
        Fixture { tmp, store, image }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn ctx(&self, tag: &str) -> ContainerContext {
        let id = testkit::unique_name(tag);
        ContainerContext {
            service: "web".into(),
            state_dir: self.state(),
            hostname: "web-1".into(),
            cgroups_path: Some(PathBuf::from(format!("/{id}"))),
            id,
            ..ContainerContext::default()
        }
    }

    fn prepare(&self, service: &Service, ctx: &ContainerContext) -> Result<Ctr, ContainerError> {
        let mut guard = Ctr {
            state: self.state(),
            id: ctx.id.clone(),
            _cgroup: testkit::CgroupGuard(ctx.id.clone()),
            prepared: None,
        };
        guard.prepared = Some(container::prepare(&self.store, &self.image, service, ctx)?);
        Ok(guard)
    }

    /// Prepares and runs `service` as a new container; returns it (for inspection)
    /// with how it ended and its output.
    fn run(&self, tag: &str, service: &Service) -> (Ctr, Result<ExitReport, RuntimeError>, String) {
        self.run_ctx(&self.ctx(tag), service)
    }

    fn run_ctx(
        &self,
        ctx: &ContainerContext,
        service: &Service,
    ) -> (Ctr, Result<ExitReport, RuntimeError>, String) {
        let ctr = self.prepare(service, ctx).unwrap();
        let out_path = self.tmp.path().join(format!("{}.out", ctx.id));
        let out = File::create(&out_path).unwrap();
        let opts = RunOptions {
            stdio: Stdio {
                stdin: None,
                stdout: Some(out.as_fd()),
                stderr: Some(out.as_fd()),
            },
            ..RunOptions::default()
        };
        let bundle = &ctr.prepared.as_ref().unwrap().bundle;
        let result = runtime::run(bundle, &ctx.id, &opts);
        (ctr, result, std::fs::read_to_string(out_path).unwrap())
    }

    /// Runs `service` and expects exit 0; returns the output.
    fn output(&self, tag: &str, service: &Service) -> String {
        let (_ctr, result, out) = self.run(tag, service);
        let report = result.unwrap_or_else(|e| panic!("{e}\noutput:\n{out}"));
        assert_eq!(report.status(), 0, "output:\n{out}");
        out
    }
}

/// A prepared container; dropping it unmounts and deletes it, and its cgroup.
struct Ctr {
    state: PathBuf,
    id: String,
    _cgroup: testkit::CgroupGuard,
    prepared: Option<container::Prepared>,
}

impl Ctr {
    fn rootfs(&self) -> &container::Rootfs {
        &self.prepared.as_ref().unwrap().rootfs
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        if let Err(e) = container::remove(&self.state, &self.id) {
            eprintln!("cleanup of {}: {e}", self.id);
        }
    }
}

fn sh(script: &str) -> Service {
    Service {
        image: Some("test/busybox:1".into()),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Service::default()
    }
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A busybox rootfs tar for a layered image (bottom layer).
fn busybox_layer(dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let root = dir.join("bottom");
    testkit::busybox_rootfs(&root).unwrap();
    edit(&root);
    let tar = dir.join("bottom.tar");
    testkit::tar_dir(&root, &tar).unwrap();
    tar
}

/// A layer tar holding `files` (path, content); content `None` is a whiteout entry.
fn layer_tar(path: &Path, files: &[(&str, Option<&str>)]) -> PathBuf {
    let mut b = tar::Builder::new(File::create(path).unwrap());
    for (name, content) in files {
        let data = content.unwrap_or("");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        let name = match content {
            Some(_) => name.to_string(),
            None => {
                let p = Path::new(name);
                let parent = p.parent().unwrap().to_str().unwrap();
                let file = p.file_name().unwrap().to_str().unwrap();
                if parent.is_empty() {
                    format!(".wh.{file}")
                } else {
                    format!("{parent}/.wh.{file}")
                }
            }
        };
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().sync_all().unwrap();
    path.to_path_buf()
}

#[test]
fn entrypoint_and_command_follow_dockers_override_rules() {
    // The image: Entrypoint ["/bin/sh", "-c"], Cmd ["echo $GREETING"], GREETING=hello.
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::layered(&[busybox_layer(tmp.path(), |_| {})]);
    type Words<'a> = Option<&'a [&'a str]>;
    let cases: &[(Words, Words, &str)] = &[
        // (entrypoint, command, output)
        (None, None, "hello\n"),
        (None, Some(&["echo from-command"]), "from-command\n"),
        // A service entrypoint drops the image's Cmd.
        (Some(&["echo", "entry"]), None, "entry\n"),
        (Some(&["echo"]), Some(&["a", "b"]), "a b\n"),
        // An empty entrypoint resets the image's: the command runs on its own.
        (Some(&[]), Some(&["echo", "plain"]), "plain\n"),
    ];
    for (i, (entrypoint, command, expected)) in cases.iter().enumerate() {
        let service = Service {
            entrypoint: entrypoint.map(strs),
            command: command.map(strs),
            ..Service::default()
        };
        let out = fx.output(&format!("cmd{i}"), &service);
        assert_eq!(
            &out, expected,
            "case {i}: entrypoint {entrypoint:?} command {command:?}"
        );
    }
    // Nothing to run at all is a clear error.
    let bare = Fixture::busybox();
    let e = bare
        .prepare(&Service::default(), &bare.ctx("nocmd"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("services.web.command: nothing to run"), "{e}");
}

#[test]
fn environment_working_dir_and_user_come_from_image_and_service() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::layered(&[busybox_layer(tmp.path(), |_| {})]);
    // The image's user (app), working dir (/home/app) and env, the service's on top.
    let mut service = Service {
        entrypoint: Some(strs(&["sh", "-c"])),
        command: Some(strs(&[
            "echo $GREETING $EXTRA ${UNSET-unset} $HOSTNAME $HOME; pwd; id -u; id -g",
        ])),
        ..Service::default()
    };
    service
        .environment
        .insert("EXTRA".into(), Some("extra".into()));
    service.environment.insert("UNSET".into(), None);
    let out = fx.output("env", &service);
    assert_eq!(
        out,
        "hello extra unset web-1 /home/app\n/home/app\n1000\n1000\n"
    );

    // The service's environment, working dir (created when missing) and hostname win.
    service
        .environment
        .insert("GREETING".into(), Some("hi".into()));
    service.working_dir = Some("/srv/new/dir".into());
    service.hostname = Some("custom".into());
    service.user = Some("root".into());
    let out = fx.output("env2", &service);
    assert_eq!(out, "hi extra unset custom /root\n/srv/new/dir\n0\n0\n");
}

#[test]
fn user_names_resolve_in_the_image_and_a_missing_one_is_a_clear_error() {
    let fx = Fixture::with_rootfs(|root| {
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .unwrap();
    });
    let cases = [
        ("app", "1000 1000 1000 50"),
        ("app:staff", "1000 50 50"),
        ("1000:0", "1000 0 0 50"),
        ("4242", "4242 0 0"),
    ];
    for (i, (user, expected)) in cases.iter().enumerate() {
        let mut service = sh("echo $(id -u) $(id -g) $(id -G)");
        service.user = Some(user.to_string());
        assert_eq!(
            fx.output(&format!("user{i}"), &service),
            format!("{expected}\n"),
            "user {user}"
        );
    }
    let mut service = sh("true");
    service.user = Some("appp".into());
    let ctx = fx.ctx("nouser");
    let e = fx.prepare(&service, &ctx).err().unwrap().to_string();
    assert_eq!(
        e,
        "services.web.user: user \"appp\" not found in the image's /etc/passwd"
    );
    // A failed prepare leaves nothing mounted or behind.
    assert!(!container::container_dir(&fx.state(), &ctx.id).exists());
}

#[test]
fn a_symlinked_etc_passwd_is_resolved_inside_the_rootfs() {
    // Absolute: /etc/passwd -> /etc/alt/passwd, a file only the image has.
    let fx = Fixture::with_rootfs(|root| {
        std::fs::create_dir(root.join("etc/alt")).unwrap();
        std::fs::write(root.join("etc/alt/passwd"), "web:x:4321:4322::/:/bin/sh\n").unwrap();
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/alt/passwd", root.join("etc/passwd")).unwrap();
    });
    let mut service = sh("echo $(id -u) $(id -g)");
    service.user = Some("web".into());
    assert_eq!(fx.output("symabs", &service), "4321 4322\n");

    // Relative and climbing out: followed on the host it reaches the host's
    // /etc/passwd (which has `daemon`); inside the root it loops back to itself.
    let fx = Fixture::with_rootfs(|root| {
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        let up = "../".repeat(40);
        std::os::unix::fs::symlink(format!("{up}etc/passwd"), root.join("etc/passwd")).unwrap();
    });
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(host.lines().any(|l| l.starts_with("root:")));
    let mut service = sh("id -u");
    service.user = Some("root".into());
    let e = fx
        .prepare(&service, &fx.ctx("symrel"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("services.web.user: cannot read the image's /etc/passwd")
            && e.contains("symbolic links"),
        "{e}"
    );
}

#[test]
fn writes_land_in_the_upper_dir_and_never_in_the_image_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let bottom = busybox_layer(tmp.path(), |root| {
        std::fs::write(root.join("etc/motd"), "bottom\n").unwrap();
        std::fs::write(root.join("gone"), "x").unwrap();
    });
    // The top layer replaces /etc/motd and whites out /gone.
    let top = layer_tar(
        &tmp.path().join("top.tar"),
        &[("etc/motd", Some("top\n")), ("gone", None)],
    );
    let fx = Fixture::layered(&[bottom, top]);
    let service = Service {
        entrypoint: Some(strs(&["sh", "-c"])),
        command: Some(strs(&[
            "cat /etc/motd; ls /gone 2>/dev/null || echo gone; echo new > /newfile; echo changed > /etc/motd; rm /etc/hostname",
        ])),
        user: Some("root".into()),
        ..Service::default()
    };
    let (ctr, result, out) = fx.run("upper", &service);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "top\ngone\n");
    let upper = ctr.rootfs().upper();
    assert_eq!(
        std::fs::read_to_string(upper.join("newfile")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "changed\n"
    );
    // A deletion is an overlayfs whiteout (a 0:0 character device) in the upper dir.
    let wh = std::fs::symlink_metadata(upper.join("etc/hostname")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // The image's layers are untouched.
    let layers = fx.store.layer_dirs(&fx.image).unwrap();
    assert_eq!(layers.len(), 2);
    for layer in &layers {
        assert!(!layer.join("newfile").exists(), "{}", layer.display());
    }
    assert_eq!(
        std::fs::read_to_string(layers[0].join("etc/motd")).unwrap(),
        "top\n"
    );
    assert_eq!(
        std::fs::read_to_string(layers[1].join("etc/motd")).unwrap(),
        "bottom\n"
    );
    assert!(layers[1].join("etc/hostname").is_file());
}

#[test]
fn an_image_with_more_layers_than_one_page_of_lowerdir_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layers = vec![busybox_layer(tmp.path(), |_| {})];
    for n in 1..60 {
        let name = format!("layers/l{n}");
        layers.push(layer_tar(
            &tmp.path().join(format!("l{n}.tar")),
            &[(&name, Some(&format!("{n}\n")))],
        ));
    }
    let fx = Fixture::layered(&layers);
    let dirs = fx.store.layer_dirs(&fx.image).unwrap();
    let lowerdir: usize = dirs.iter().map(|d| d.as_os_str().len() + 1).sum();
    assert!(
        lowerdir > 4096,
        "the test needs a lowerdir longer than a page ({lowerdir})"
    );
    let service = Service {
        entrypoint: Some(strs(&["sh", "-c"])),
        command: Some(strs(&["ls /layers | wc -l; cat /layers/l1 /layers/l59"])),
        ..Service::default()
    };
    assert_eq!(
        fx.output("many", &service)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["59", "1", "59"]
    );
}

#[test]
fn read_only_makes_the_root_read_only_but_tmpfs_mounts_stay_writable() {
    let fx = Fixture::busybox();
    let mut service = sh("touch /x 2>/dev/null && echo root-rw || echo root-ro; \
         touch /run/a && echo run-rw; touch /data/b && echo data-rw; \
         stat -c %a /data; grep ' /data ' /proc/mounts | grep -o 'size=[0-9a-z]*'");
    service.read_only = true;
    service.tmpfs = vec!["/run:size=1m".into()];
    service.volumes = vec![Mount {
        kind: MountType::Tmpfs,
        source: None,
        target: "/data".into(),
        read_only: false,
        bind: None,
        volume: None,
        tmpfs: Some(TmpfsOptions {
            size: Some(2 << 20),
            mode: Some(0o1770),
        }),
    }];
    let (ctr, result, out) = fx.run("ro", &service);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "root-ro\nrun-rw\ndata-rw\n1770\nsize=2048k\n");
    assert!(!ctr.rootfs().upper().join("x").exists());
}

fn volume(source: Option<&str>, target: &str) -> Mount {
    Mount {
        kind: MountType::Volume,
        source: source.map(String::from),
        target: target.into(),
        read_only: false,
        bind: None,
        volume: None,
        tmpfs: None,
    }
}

#[test]
fn a_named_volume_is_seeded_from_the_image_and_persists_across_containers() {
    let fx = Fixture::with_rootfs(|root| {
        std::fs::create_dir_all(root.join("srv/data/sub")).unwrap();
        std::fs::write(root.join("srv/data/seed"), "from-image\n").unwrap();
        std::fs::write(root.join("srv/data/sub/deep"), "deep\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("srv/data/link")).unwrap();
    });
    let mut ctx = fx.ctx("vol1");
    ctx.volumes.insert(
        "data".into(),
        spec::model::Volume {
            name: "proj_data".into(),
            ..Default::default()
        },
    );
    let mut first = sh("cat /srv/data/seed /srv/data/sub/deep; readlink /srv/data/link; echo written > /srv/data/new");
    first.volumes = vec![volume(Some("data"), "/srv/data")];
    let (_c1, result, out) = fx.run_ctx(&ctx, &first);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "from-image\ndeep\n/etc/passwd\n");
    let data = fx.state().join("volumes/proj_data/_data");
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "written\n"
    );
    // The symlink was copied as a link, not followed to the host's file.
    assert!(std::fs::symlink_metadata(data.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A second container sees the first one's write; the volume is not seeded again.
    std::fs::remove_file(data.join("seed")).unwrap();
    let mut ctx2 = fx.ctx("vol2");
    ctx2.volumes = ctx.volumes.clone();
    let mut second = sh("cat /srv/data/new; ls /srv/data/seed 2>/dev/null || echo no-seed");
    second.volumes = vec![volume(Some("data"), "/srv/data")];
    let (_c2, result, out) = fx.run_ctx(&ctx2, &second);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "written\nno-seed\n");

    // nocopy: an empty volume.
    let mut third = sh("ls -A /srv/data | wc -l");
    let mut v = volume(Some("fresh"), "/srv/data");
    v.volume = Some(VolumeOptions {
        nocopy: true,
        subpath: None,
    });
    third.volumes = vec![v];
    assert_eq!(fx.output("vol3", &third).trim(), "0");
}

#[test]
fn containers_that_make_one_volume_at_once_share_it() {
    // Replicas of a service starting together on one node: each finds the volume
    // missing and seeds it; they must all end up on the one volume. Eight at once
    // (a barrier lines them up), over several volumes.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("srv/data")).unwrap();
    std::fs::write(root.join("srv/data/seed"), "from-image\n").unwrap();
    let state = tmp.path().join("state");
    let service = Service {
        volumes: vec![volume(Some("data"), "/srv/data")],
        ..Service::default()
    };
    for round in 0..10 {
        let name = format!("proj_race{round}");
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let mut ctx = ContainerContext {
                        id: format!("c{round}-{i}"),
                        service: "web".into(),
                        state_dir: state.clone(),
                        ..ContainerContext::default()
                    };
                    ctx.volumes.insert(
                        "data".into(),
                        spec::model::Volume {
                            name: name.clone(),
                            ..Default::default()
                        },
                    );
                    let (service, barrier, root) = (&service, &barrier, &root);
                    s.spawn(move || {
                        let dir = File::open(root).unwrap();
                        barrier.wait();
                        container::mounts::service_mounts(service, &ctx, dir.as_fd())
                            .map(drop)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
        let volume = state.join("volumes").join(&name);
        let names: Vec<String> = std::fs::read_dir(&volume)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["_data"], "no side directory is left");
        assert_eq!(
            std::fs::read_to_string(volume.join("_data/seed")).unwrap(),
            "from-image\n"
        );
    }
}

#[test]
fn a_bind_mount_with_create_host_path_creates_its_source() {
    let fx = Fixture::busybox();
    let source = fx.tmp.path().join("host/made/here");
    let bind = |create: bool| Mount {
        kind: MountType::Bind,
        source: Some(source.to_string_lossy().into_owned()),
        target: "/mnt/b".into(),
        read_only: false,
        bind: Some(BindOptions {
            create_host_path: create,
            ..BindOptions::default()
        }),
        volume: None,
        tmpfs: None,
    };
    let mut service = sh("echo hi > /mnt/b/file");
    service.volumes = vec![bind(false)];
    let e = fx
        .prepare(&service, &fx.ctx("bind0"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("services.web.volumes[0]: bind source") && e.contains("create_host_path"),
        "{e}"
    );

    service.volumes = vec![bind(true)];
    fx.output("bind1", &service);
    assert_eq!(
        std::fs::read_to_string(source.join("file")).unwrap(),
        "hi\n"
    );
}

#[test]
fn a_secret_is_a_read_only_file_with_the_requested_owner_and_mode() {
    let fx = Fixture::busybox();
    let mut ctx = fx.ctx("secret");
    ctx.secrets.insert(
        "token".into(),
        FileObject {
            name: "proj_token".into(),
            content: Some("s3cret".into()),
            ..FileObject::default()
        },
    );
    let mut service = sh(
        "stat -c '%u %g %a' /run/secrets/token; cat /run/secrets/token; echo; \
         echo x 2>/dev/null > /run/secrets/token || echo read-only",
    );
    service.secrets = vec![FileMount {
        source: "token".into(),
        target: "/run/secrets/token".into(),
        uid: Some("app".into()),
        gid: Some("1001".into()),
        mode: Some(0o440),
    }];
    let (c, result, out) = fx.run_ctx(&ctx, &service);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "1000 1001 440\ns3cret\nread-only\n");
    // On the host, the secret is in memory only: a tmpfs, gone with the container.
    let dir = ctx.dir().join("secrets");
    let fs = nix::sys::statfs::statfs(&dir).expect("statfs");
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    drop(c);
    assert!(!dir.exists(), "{} is left", dir.display());

    // The content a stack record carries (a cluster node has not the file) wins over
    // the definition's source, bytes as they are.
    let mut ctx = fx.ctx("secret-data");
    ctx.secrets.insert(
        "token".into(),
        FileObject {
            name: "proj_token".into(),
            file: Some("/nonexistent/on/this/node".into()),
            ..FileObject::default()
        },
    );
    ctx.data
        .insert("secrets.token".into(), "AP9yZWNvcmRlZA==".into());
    service.secrets[0].uid = None;
    service.secrets[0].gid = None;
    let mut service = service.clone();
    service.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "od -An -c /run/secrets/token | tr -s ' '".into(),
    ]);
    let (_c, result, out) = fx.run_ctx(&ctx, &service);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out.trim(), "\\0 377 r e c o r d e d");

    // An undefined secret names the field.
    service.secrets[0].source = "missing".into();
    let e = fx
        .prepare(&service, &fx.ctx("secret2"))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "services.web.secrets[0]: secret \"missing\" is not defined in the top-level secrets"
    );
}

#[test]
fn limits_land_in_the_cgroup_and_shm_size_sizes_dev_shm() {
    let fx = Fixture::busybox();
    let sync = fx.tmp.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    let mut service = sh(
        "grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9a-z]*'; \
         touch /sync/ready; while [ ! -e /sync/go ]; do sleep 0.05; done",
    );
    service.mem_limit = Some(64 << 20);
    service.pids_limit = Some(77);
    service.cpus = Some(0.5);
    service.shm_size = Some(8 << 20);
    service.volumes = vec![Mount {
        kind: MountType::Bind,
        source: Some(sync.to_string_lossy().into_owned()),
        target: "/sync".into(),
        read_only: false,
        bind: None,
        volume: None,
        tmpfs: None,
    }];
    let ctx = fx.ctx("limits");
    // Read the cgroup while the container waits for /sync/go.
    let id = ctx.id.clone();
    let sync2 = sync.clone();
    let reader = std::thread::spawn(move || {
        for _ in 0..600 {
            if sync2.join("ready").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let read = |candidates: &[String]| {
            candidates
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let memory = read(&[
            format!("/sys/fs/cgroup/memory/{id}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/{id}/memory.max"),
        ]);
        let pids = read(&[
            format!("/sys/fs/cgroup/pids/{id}/pids.max"),
            format!("/sys/fs/cgroup/{id}/pids.max"),
        ]);
        let cpu = read(&[
            format!("/sys/fs/cgroup/cpu,cpuacct/{id}/cpu.cfs_quota_us"),
            format!("/sys/fs/cgroup/cpu/{id}/cpu.cfs_quota_us"),
            format!("/sys/fs/cgroup/{id}/cpu.max"),
        ]);
        std::fs::write(sync2.join("go"), "").unwrap();
        (memory, pids, cpu)
    });
    let (_c, result, out) = fx.run_ctx(&ctx, &service);
    let (memory, pids, cpu) = reader.join().unwrap();
    assert_eq!(result.unwrap().status(), 0, "{out}");
    assert_eq!(out, "size=8192k\n");
    assert_eq!(memory, (64u64 << 20).to_string());
    assert_eq!(pids, "77");
    assert!(cpu == "50000" || cpu == "50000 100000", "{cpu}");
}

#[test]
fn capabilities_follow_cap_add_and_cap_drop() {
    let fx = Fixture::busybox();
    let mut service = sh("grep CapEff /proc/self/status");
    service.cap_drop = vec!["ALL".into()];
    service.cap_add = vec!["CHOWN".into(), "net_bind_service".into()];
    assert_eq!(fx.output("caps", &service), "CapEff:\t0000000000000401\n");
    service.cap_add = vec!["CAP_NOPE".into()];
    let e = fx
        .prepare(&service, &fx.ctx("caps2"))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "services.web.cap_add[0]: unknown capability \"CAP_NOPE\""
    );
}

#[test]
fn sysctls_must_be_namespaced() {
    let fx = Fixture::busybox();
    let mut service = sh("cat /proc/sys/net/ipv4/ip_unprivileged_port_start");
    service.sysctls = BTreeMap::from([(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "80".to_string(),
    )]);
    assert_eq!(fx.output("sysctl", &service), "80\n");
    service.sysctls.insert("vm.swappiness".into(), "10".into());
    let e = fx
        .prepare(&service, &fx.ctx("sysctl2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("services.web.sysctls.vm.swappiness: not namespaced"),
        "{e}"
    );
}

#[test]
fn a_service_loaded_from_compose_yaml_runs() {
    let fx = Fixture::busybox();
    let yaml = "services:\n  web:\n    image: test/busybox:1\n    user: app\n    read_only: true\n    tmpfs: [/tmp]\n    environment:\n      MSG: from-yaml\n    command: [sh, -c, 'echo $$MSG $$(id -u); touch /tmp/ok && echo tmp-ok']\n";
    let opts = spec::LoadOptions {
        files: vec![PathBuf::from("-")],
        working_dir: fx.tmp.path().to_path_buf(),
        stdin_text: Some(yaml.into()),
        ..spec::LoadOptions::default()
    };
    let project = spec::load(&opts).unwrap();
    let service = &project.stack.services["web"];
    assert_eq!(fx.output("yaml", service), "from-yaml 1000\ntmp-ok\n");
}

/// The init layer (`container::init_layer`) lies under the image: an image without
/// /proc, /dev, /sys or /etc/resolv.conf gets them from it (so nothing is created in
/// the container's upper dir), and what the image has itself (its /etc/hosts) wins.
#[test]
fn the_init_layer_fills_in_mount_points_under_the_image() {
    let fx = Fixture::with_rootfs(|root| {
        for d in ["proc", "dev", "sys"] {
            std::fs::remove_dir(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/hosts"), "10.9.8.7 from-the-image\n").unwrap();
        let _ = std::fs::remove_file(root.join("etc/resolv.conf"));
    });
    let ctx = ContainerContext {
        network_files: true,
        ..fx.ctx("initlayer")
    };
    let service = Service {
        entrypoint: Some(strs(&["sh", "-c"])),
        command: Some(strs(&[
            "test -r /proc/self/status && test -d /sys/kernel && test -c /dev/null && cat /etc/hosts && wc -c < /etc/resolv.conf",
        ])),
        user: Some("root".into()),
        ..Service::default()
    };
    let (ctr, result, out) = fx.run_ctx(&ctx, &service);
    assert_eq!(result.unwrap().status(), 0, "{out}");
    // The image's /etc/hosts, not the init layer's empty one; its empty resolv.conf.
    assert_eq!(out, "10.9.8.7 from-the-image\n0\n");
    let upper = ctr.rootfs().upper();
    for path in ["proc", "dev", "sys", "etc/resolv.conf", "etc"] {
        assert!(
            std::fs::symlink_metadata(upper.join(path)).is_err(),
            "{path} was created in the container's upper dir"
        );
    }
    let init = fx.state().join("init/net");
    assert!(init.join("etc/resolv.conf").is_file());
}
