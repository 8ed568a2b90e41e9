#!/usr/bin/env bash
# Runs deploy/examples/slurm-array.sh offline, as Slurm would run task 7 of array job 4242,
# with stub `era5` and `scontrol` commands first on PATH: for each exit status of era5 (and a
# signal from Slurm), the script's own exit status and whether it requeued exactly its own
# array element. Checks that era5 ran `sync ... --shard auto/16` with SLURM_ARRAY_TASK_ID in its
# environment. Also `bash -n` and shellcheck on the script (shellcheck on this one and check.sh
# too). Exits 1 on any failure; prints one line on success.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
script=$here/slurm-array.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
    echo "check_slurm: $*" >&2
    failures=$((failures + 1))
}

bash -n "$script"
if ! command -v shellcheck >/dev/null 2>&1; then
    echo "check_slurm: shellcheck is not installed (Debian: shellcheck; scripts/test installs it)" >&2
    exit 1
fi
shellcheck "$script" "$0" "$here/check.sh" || fail "shellcheck found problems"

mkdir -p "$work/bin"
# era5: records its arguments and the Slurm task id it saw, then exits with $STUB_EXIT; with
# STUB_EXIT=wait it runs until SIGTERM and then exits 130, as `era5 sync` does.
cat >"$work/bin/era5" <<'STUB'
#!/usr/bin/env bash
printf '%s\n' "$@" >"$STUB_DIR/era5.args"
echo "${SLURM_ARRAY_TASK_ID-unset}" >"$STUB_DIR/era5.task"
if [ "$STUB_EXIT" = wait ]; then
    trap 'echo TERM >"$STUB_DIR/era5.signal"; exit 130' TERM
    touch "$STUB_DIR/era5.started"
    for _ in $(seq 100); do sleep 0.1; done
    exit 0
fi
exit "$STUB_EXIT"
STUB
cat >"$work/bin/scontrol" <<'STUB'
#!/usr/bin/env bash
echo "$*" >>"$STUB_DIR/scontrol.calls"
STUB
chmod +x "$work/bin/era5" "$work/bin/scontrol"

# run NAME ERA5_EXIT [VAR=VALUE...]: the script in a clean environment, as task 7 of 4242.
run() {
    local name=$1 code=$2
    shift 2
    local dir=$work/$name
    mkdir -p "$dir"
    status=0
    (cd "$dir" && env -i PATH="$work/bin:/usr/bin:/bin" HOME="$dir" STUB_DIR="$dir" STUB_EXIT="$code" \
        SLURM_JOB_ID=4249 SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=7 SLURM_ARRAY_TASK_MIN=0 \
        SLURM_ARRAY_TASK_MAX=15 SLURM_ARRAY_TASK_COUNT=16 "$@" \
        bash "$script" >"$dir/stdout" 2>"$dir/stderr") || status=$?
}

# expect NAME STATUS REQUEUED(yes|no): after run.
expect() {
    local name=$1 want=$2 requeued=$3 dir=$work/$1
    [ "$status" = "$want" ] || fail "$name: exit $status, expected $want ($(cat "$dir/stderr"))"
    local calls
    calls=$(cat "$dir/scontrol.calls" 2>/dev/null || true)
    if [ "$requeued" = yes ]; then
        [ "$calls" = "requeue 4242_7" ] || fail "$name: scontrol calls '$calls', expected 'requeue 4242_7'"
    else
        [ -z "$calls" ] || fail "$name: requeued ('$calls') but should not be"
    fi
}

# expect_era5_ran NAME: era5 got `sync ... --shard auto/16 --no-progress --json` and task 7.
expect_era5_ran() {
    local dir=$work/$1
    if [ ! -f "$dir/era5.args" ]; then
        fail "$1: era5 did not run"
        return
    fi
    [ "$(head -n 1 "$dir/era5.args")" = sync ] || fail "$1: era5's first argument is not sync"
    # The arguments one a line: --shard followed by auto/16.
    if ! awk 'prev == "--shard" && $0 == "auto/16" { found = 1 } { prev = $0 } END { exit !found }' \
        "$dir/era5.args"; then
        fail "$1: --shard auto/16 did not reach era5 ($(tr '\n' ' ' <"$dir/era5.args"))"
    fi
    for flag in --no-progress --json; do
        grep -qxF -- "$flag" "$dir/era5.args" || fail "$1: era5 did not get $flag"
    done
    [ "$(cat "$dir/era5.task")" = 7 ] || fail "$1: era5 saw SLURM_ARRAY_TASK_ID=$(cat "$dir/era5.task")"
}

run complete 0
expect complete 0 no
expect_era5_ran complete
run failed 1
expect failed 1 yes
expect_era5_ran failed
run bad-input 2
expect bad-input 2 no
grep -q "not requeued" "$work/bad-input/stderr" || fail "bad-input: no reason printed"
run limit 3
expect limit 3 yes
run interrupted 130
expect interrupted 130 yes
# SLURM_RESTART_COUNT reached the bound: not requeued again, the task fails with era5's status.
run bounded 1 SLURM_RESTART_COUNT=5
expect bounded 1 no
run below-bound 130 SLURM_RESTART_COUNT=4
expect below-bound 130 yes
run crashed 137
expect crashed 137 no
# An array whose size is not the shard count: refused before era5 runs.
run wrong-array 0 SLURM_ARRAY_TASK_COUNT=8
expect wrong-array 2 no
[ ! -f "$work/wrong-array/era5.args" ] || fail "wrong-array: era5 ran"

# Slurm's warning before the time limit (--signal=B:USR1@300): the script passes SIGTERM on to
# era5, which exits 130, and requeues the task.
dir=$work/signalled
mkdir -p "$dir"
(cd "$dir" && exec env -i PATH="$work/bin:/usr/bin:/bin" HOME="$dir" STUB_DIR="$dir" STUB_EXIT=wait \
    SLURM_JOB_ID=4249 SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=7 SLURM_ARRAY_TASK_MIN=0 \
    bash "$script" >"$dir/stdout" 2>"$dir/stderr") &
pid=$!
for _ in $(seq 100); do
    [ -f "$dir/era5.started" ] && break
    sleep 0.05
done
kill -USR1 "$pid"
status=0
wait "$pid" || status=$?
expect signalled 130 yes
[ "$(cat "$dir/era5.signal" 2>/dev/null)" = TERM ] || fail "signalled: era5 did not get SIGTERM"

if [ "$failures" -gt 0 ]; then
    echo "check_slurm: $failures failed" >&2
    exit 1
fi
echo "deploy/examples: slurm-array.sh maps era5's exit statuses 0/1/2/3/130 (requeues 1, 3, 130 up to a bound; not 2)"
