// Shared by the gix and git2 benches (bench/git-libs/run.sh): clone (fetch into a fresh
// bare cache + write the tree) and fetch-a-new-commit (one more commit pushed to the
// source, then sync again) of $BENCH_DIR/src.git, which run.sh makes with ~200 files.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn git(dir: &str, args: &[&str]) {
    let st = Command::new("git").current_dir(dir).args(args).status().unwrap();
    assert!(st.success());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(10);
    let dir = std::env::var("BENCH_DIR").expect("BENCH_DIR: run this through run.sh");
    let work = format!("{dir}/work");
    let url = &format!("file://{dir}/src.git");
    let (mut clones, mut fetches) = (Vec::new(), Vec::new());
    for i in 0..n {
        let cache = format!("{dir}/cache-{}", env!("CARGO_PKG_NAME"));
        let _ = std::fs::remove_dir_all(&cache);
        let t = Instant::now();
        let c1 = sync(url, Path::new(&cache));
        clones.push(t.elapsed());
        std::fs::write(format!("{work}/stack{}/file1.yaml", i % 10), format!("change {i}\n")).unwrap();
        git(&work, &["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qam", "change"]);
        git(&work, &["push", "-q", "origin", "main"]);
        let t = Instant::now();
        let c2 = sync(url, Path::new(&cache));
        fetches.push(t.elapsed());
        assert_ne!(c1, c2);
        let files = walk(&Path::new(&cache).join("trees").join(&c2));
        assert_eq!(files, 200, "files in tree");
    }
    println!("{}: clone median {:?} (min {:?}), fetch-new-commit median {:?} (min {:?})",
        env!("CARGO_PKG_NAME"), median(clones.clone()), clones.iter().min().unwrap(),
        median(fetches.clone()), fetches.iter().min().unwrap());
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p).unwrap().map(|e| {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 1 }
    }).sum()
}
