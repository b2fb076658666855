#!/bin/sh
# Compares gix (gitoxide) and git2 (libgit2, vendored) for gitops::remote: clean release
# build time, stripped binary size, and time to clone and to fetch a new commit of a
# file:// repository of 200 files. Usage: bench/git-libs/run.sh [ITERATIONS]
# Needs git, strip and network access to crates.io; builds in a temporary directory.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-20}
dir=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT  # KEEP=1 keeps the builds and timings
export BENCH_DIR="$dir"

fixture() {
    rm -rf "$dir/src.git" "$dir/work"
    git init -q --bare -b main "$dir/src.git"
    git init -q -b main "$dir/work"
    for d in 0 1 2 3 4 5 6 7 8 9; do
        mkdir -p "$dir/work/stack$d"
        for f in $(seq 1 20); do
            head -c 1500 /dev/urandom | base64 >"$dir/work/stack$d/file$f.yaml"
        done
    done
    git -C "$dir/work" add -A
    git -C "$dir/work" -c user.name=b -c user.email=b@x commit -q -m init
    git -C "$dir/work" remote add origin "$dir/src.git"
    git -C "$dir/work" push -q origin main
}

crate() { # name, dependency lines, main source
    mkdir -p "$dir/$1/src/bin"
    cat >"$dir/$1/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.1.0"
edition = "2021"

[dependencies]
$2

[profile.release]
debug = "line-tables-only"
TOML
    cp "$here/harness.rs" "$dir/$1/src/"
    cp "$here/$3" "$dir/$1/src/main.rs"
}

# The gix crate also builds reqwest's blocking client over rustls alone: berth already
# has that part, so gix's own share of the binary is the difference.
crate gixb 'gix = { version = "0.91", default-features = false, features = ["blocking-network-client", "blocking-http-transport-reqwest-rust-tls", "sha1", "max-performance"] }
reqwest = { version = "0.13", default-features = false, features = ["blocking", "rustls", "http2"] }' gix.rs
cp "$here/reqwest_only.rs" "$dir/gixb/src/bin/"
crate git2b 'git2 = { version = "0.21", default-features = false, features = ["vendored-libgit2", "https", "ssh", "vendored-openssl"] }' git2.rs
crate base '' base.rs

for c in base gixb git2b; do
    echo "== clean release build of $c"
    (cd "$dir/$c" && /usr/bin/time -f "$c: %e s wall, %U s user" cargo build --release -q --timings)
    echo "   per-crate times: $dir/$c/target/cargo-timings/cargo-timing.html"
done
for b in base/base gixb/reqwest_only gixb/gixb git2b/git2b; do
    strip -o "$dir/stripped" "$dir/$(dirname $b)/target/release/$(basename $b)"
    echo "$(basename $b): $(stat -c %s "$dir/stripped") bytes stripped"
done
for round in 1 2 3; do
    fixture && "$dir/gixb/target/release/gixb" "$n"
    fixture && "$dir/git2b/target/release/git2b" "$n"
done
