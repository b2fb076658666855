include!("harness.rs");

use std::sync::atomic::AtomicBool;

fn sync(url: &str, cache: &Path) -> String {
    let git_dir = cache.join("repo.git");
    let repo = if git_dir.exists() { gix::open(&git_dir).unwrap() } else { gix::init_bare(&git_dir).unwrap() };
    let remote = repo
        .remote_at(url)
        .unwrap()
        .with_refspecs(Some("+refs/heads/main:refs/berth/fetched"), gix::remote::Direction::Fetch)
        .unwrap()
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let conn = remote.connect(gix::remote::Direction::Fetch).unwrap();
    let outcome = conn
        .prepare_fetch(gix::progress::Discard, Default::default())
        .unwrap()
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .unwrap();
    let id = outcome.ref_map.mappings[0].remote.as_id().unwrap().to_owned();
    let hex = id.to_string();
    let dest = cache.join("trees").join(&hex);
    if !dest.exists() {
        let tmp = cache.join("trees").join(format!(".tmp-{hex}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let tree = repo.find_commit(id).unwrap().tree().unwrap();
        write_tree(&repo, &tree, &tmp);
        std::fs::rename(&tmp, &dest).unwrap();
    }
    hex
}

fn write_tree(repo: &gix::Repository, tree: &gix::Tree<'_>, dir: &Path) {
    use gix::object::tree::EntryKind;
    for entry in tree.iter() {
        let entry = entry.unwrap();
        let path = dir.join(entry.filename().to_string());
        match entry.mode().kind() {
            EntryKind::Tree => {
                std::fs::create_dir(&path).unwrap();
                let sub = repo.find_tree(entry.oid().to_owned()).unwrap();
                write_tree(repo, &sub, &path);
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let blob = repo.find_blob(entry.oid().to_owned()).unwrap();
                std::fs::write(&path, &blob.data).unwrap();
            }
            EntryKind::Link => {
                let blob = repo.find_blob(entry.oid().to_owned()).unwrap();
                std::os::unix::fs::symlink(String::from_utf8_lossy(&blob.data).as_ref(), &path).unwrap();
            }
            EntryKind::Commit => {}
        }
    }
}
