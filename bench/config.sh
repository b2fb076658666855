#!/usr/bin/env bash
# Benchmark `berth config` against Debian's docker-compose (Compose v1).
#
# For each stack size (10, 100, 1000 services by default) this generates a
# Compose file with bench/gen-stack.py and times, side by side with
# hyperfine:
#
#   $BERTH config -q -f FILE
#   docker-compose -f FILE config -q
#
# Both tools parse, interpolate, merge anchors, validate and resolve the
# model. With -q they print nothing. Before timing, each tool is run once
# on each file. A tool that fails is reported as FAILED with its exit code
# and first error line, and it is left out of the timing: it never gets a
# number.
#
# Environment:
#   BERTH       berth binary (default: <repo>/target/release/berth). When
#               BERTH is set, the cargo build is skipped.
#   SIZES       service counts to test (default: "10 100 1000")
#   WARMUP      hyperfine warmup runs (default: 3)
#   MIN_RUNS    hyperfine minimum runs (default: 10)
#   RESULTS_DIR where the hyperfine JSON goes
#               (default: <repo>/target/bench/config)
#   SKIP_BUILD  set to 1 to use the existing berth binary without building
#   NO_INSTALL  set to 1 to fail instead of apt-get installing missing tools
#
# Usage: bench/config.sh            (from anywhere)
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd -- "$script_dir/.." && pwd)

sizes=${SIZES:-"10 100 1000"}
warmup=${WARMUP:-3}
min_runs=${MIN_RUNS:-10}
results_dir=${RESULTS_DIR:-$repo_root/target/bench/config}
berth_default=$repo_root/target/release/berth
berth=${BERTH:-$berth_default}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-config.XXXXXX")
cleanup() { rm -rf -- "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------
missing=()
command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]} > 0)); then
    [[ ${NO_INSTALL:-0} == 1 ]] && die "missing tools: ${missing[*]} (NO_INSTALL=1)"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing tools: ${missing[*]}, and not root to install them"
        sudo=(sudo)
    fi
    log "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

dc_version=$(docker-compose version --short 2>/dev/null || docker-compose --version)
hf_version=$(hyperfine --version)
log "docker-compose $dc_version; $hf_version"

# --- berth -------------------------------------------------------------------
berth_problem=""
if [[ -z ${BERTH:-} && ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release (in $repo_root)"
    if ! (cd -- "$repo_root" && cargo build --release) >"$tmp/build.log" 2>&1; then
        tail -n 20 "$tmp/build.log" >&2
        berth_problem="cargo build --release failed"
    fi
fi
if [[ -z $berth_problem ]]; then
    if [[ ! -e $berth ]]; then
        berth_problem="no berth binary at $berth"
    elif [[ ! -x $berth ]]; then
        berth_problem="$berth is not executable"
    fi
fi
[[ -n $berth_problem ]] && log "berth will not be timed: $berth_problem"

# --- generate ----------------------------------------------------------------
mkdir -p -- "$results_dir"
for n in $sizes; do
    [[ $n =~ ^[0-9]+$ ]] || die "SIZES must hold numbers, got '$n'"
    mkdir -p -- "$tmp/stack-$n"
    python3 "$script_dir/gen-stack.py" "$n" >"$tmp/stack-$n/compose.yaml"
done

# first_error FILE: first non-empty line of FILE, shortened
first_error() {
    local line
    line=$(grep -m1 -v '^[[:space:]]*$' -- "$1" || true)
    printf '%s' "${line:0:100}"
}

# check NAME FILE CMD...: run once; print "" if it works, else the reason
check() {
    local name=$1 file=$2 rc=0
    shift 2
    timeout 300 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" </dev/null || rc=$?
    if ((rc == 0)); then
        return 0
    elif ((rc == 124)); then
        printf 'FAILED: timed out after 300s on %s' "$(basename -- "$(dirname -- "$file")")/compose.yaml"
    else
        printf 'FAILED (exit %d): %s' "$rc" "$(first_error "$tmp/$name.err")"
    fi
}

# --- time --------------------------------------------------------------------
declare -A berth_cell dc_cell ratio_cell
notes=()
for n in $sizes; do
    file=$tmp/stack-$n/compose.yaml
    berth_cmd=$(printf '%q config -q -f %q' "$berth" "$file")
    dc_cmd=$(printf 'docker-compose -f %q config -q' "$file")

    args=()
    names=()
    if [[ -n $berth_problem ]]; then
        berth_cell[$n]="not run"
    else
        why=$(check berth "$file" "$berth" config -q -f "$file")
        if [[ -n $why ]]; then
            berth_cell[$n]="FAILED"
            notes+=("berth, $n services: $why")
        else
            args+=(-n berth "$berth_cmd")
            names+=(berth)
        fi
    fi
    why=$(check docker-compose "$file" docker-compose -f "$file" config -q)
    if [[ -n $why ]]; then
        dc_cell[$n]="FAILED"
        notes+=("docker-compose, $n services: $why")
    else
        args+=(-n docker-compose "$dc_cmd")
        names+=(docker-compose)
    fi

    ratio_cell[$n]="n/a"
    ((${#names[@]} > 0)) || continue

    json=$results_dir/config-$n.json
    log "timing $n services: ${names[*]}"
    hyperfine --shell=none --warmup "$warmup" --min-runs "$min_runs" --style basic \
        --export-json "$json" "${args[@]}" >&2

    # mean +/- stddev per command, in ms; ratio = docker-compose / berth
    while IFS=$'\t' read -r cmd cell; do
        case $cmd in
            berth) berth_cell[$n]=$cell ;;
            docker-compose) dc_cell[$n]=$cell ;;
            ratio) ratio_cell[$n]=$cell ;;
        esac
    done < <(python3 - "$json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
for name, r in results.items():
    print(f"{name}\t{r['mean'] * 1e3:.1f} +/- {r['stddev'] * 1e3:.1f} ms")
if "berth" in results and "docker-compose" in results:
    print(f"ratio\t{results['docker-compose']['mean'] / results['berth']['mean']:.1f}x")
PY
)
done

# --- report ------------------------------------------------------------------
berth_label=${berth#"$repo_root"/}
printf "\n\`berth config -q\` (%s) vs \`docker-compose config -q\` (%s)\n\n" "$berth_label" "$dc_version"
printf '| %-8s | %-22s | %-22s | %-16s |\n' services "berth mean" "docker-compose mean" "berth faster by"
printf '|%s|%s|%s|%s|\n' "----------" "------------------------" "------------------------" "------------------"
for n in $sizes; do
    printf '| %8s | %-22s | %-22s | %-16s |\n' "$n" "${berth_cell[$n]:-?}" "${dc_cell[$n]:-?}" "${ratio_cell[$n]}"
done
if [[ -n $berth_problem ]]; then
    printf '\nberth not run: %s\n' "$berth_problem"
fi
if ((${#notes[@]} > 0)); then
    printf '\n'
    printf -- '- %s\n' "${notes[@]}"
fi
printf '\nhyperfine JSON: %s/config-N.json\n' "$results_dir"

# A failure to parse is a result worth reporting, not a script error. But if
# berth could not be timed at all, the exit status says so.
if [[ -n $berth_problem ]] || [[ " ${berth_cell[*]} " == *" FAILED "* ]]; then
    exit 2
fi
