include!("harness.rs");

fn sync(url: &str, cache: &Path) -> String {
    let git_dir = cache.join("repo.git");
    let repo = if git_dir.exists() { git2::Repository::open_bare(&git_dir).unwrap() } else { git2::Repository::init_bare(&git_dir).unwrap() };
    let mut remote = repo.remote_anonymous(url).unwrap();
    let mut opts = git2::FetchOptions::new();
    opts.download_tags(git2::AutotagOption::None);
    remote.fetch(&["+refs/heads/main:refs/berth/fetched"], Some(&mut opts), None).unwrap();
    let id = repo.refname_to_id("refs/berth/fetched").unwrap();
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

fn write_tree(repo: &git2::Repository, tree: &git2::Tree<'_>, dir: &Path) {
    for entry in tree.iter() {
        let path = dir.join(String::from_utf8_lossy(entry.name_bytes()).as_ref());
        match entry.filemode() {
            0o040000 => {
                std::fs::create_dir(&path).unwrap();
                let sub = repo.find_tree(entry.id()).unwrap();
                write_tree(repo, &sub, &path);
            }
            0o100644 | 0o100755 => {
                let blob = repo.find_blob(entry.id()).unwrap();
                std::fs::write(&path, blob.content()).unwrap();
            }
            0o120000 => {
                let blob = repo.find_blob(entry.id()).unwrap();
                std::os::unix::fs::symlink(String::from_utf8_lossy(blob.content()).as_ref(), &path).unwrap();
            }
            _ => {}
        }
    }
}
