#!/usr/bin/env bash
# era5 sync as a Slurm job array: 16 shards of one fixed selection, at most 4 running at a time,
# every task writing into one shared directory. Task I is shard I of 16 (`--shard auto/16`
# reads SLURM_ARRAY_TASK_ID less SLURM_ARRAY_TASK_MIN). Edit the selection and DEST below, then
#
#   sbatch deploy/examples/slurm-array.sh
#
# Exit status of each task, from era5's (the table of `era5 --help`):
#   0            done
#   2            bad input: the reason is printed and the task fails, not requeued (running
#                again unchanged fails the same way)
#   1, 3, 130    failed (transient), stopped at --max-transfer/--max-duration, or interrupted:
#                the task requeues itself, at most ERA5_MAX_REQUEUES times (default 5), and
#                the next run resumes (finished files are skipped)
#   other        a crash or a kill (137: out of memory) fails the task, not requeued
# deploy/examples/check_slurm.sh runs this script against stub era5 and scontrol commands.
#
#SBATCH --job-name=era5-sync
# One task per shard: the array's size must be the N of --shard auto/N below (checked).
#SBATCH --array=0-15%4
#SBATCH --time=08:00:00
# One core verifies about 1 GB/s; sync keeps its buffers within an eighth of its memory.
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
# One log per task (%A the array's job id, %a the task id); the JSON summary is the last line.
#SBATCH --output=era5-sync-%A_%a.out
# The task may be requeued (by itself below, and by Slurm when preempted or its node fails).
#SBATCH --requeue
# Five minutes before the time limit, SIGUSR1 to this script alone: it asks era5 to stop
# (exit 130, nothing lost) and requeues the task, rather than being killed at the limit.
#SBATCH --signal=B:USR1@300
set -uo pipefail

# era5 must be on PATH on the compute nodes (pip install era5-mirror, or cargo install).
shards=16
selection=(--product e5.oper.an.sfc --start 2024-01 --end 2024-12)
dest=/shared/era5
max_requeues=${ERA5_MAX_REQUEUES:-5}

task="${SLURM_ARRAY_JOB_ID:?not a Slurm array task (sbatch --array)}_${SLURM_ARRAY_TASK_ID:?}"
if [ -n "${SLURM_ARRAY_TASK_COUNT:-}" ] && [ "$SLURM_ARRAY_TASK_COUNT" != "$shards" ]; then
    echo "era5-sync: the array has $SLURM_ARRAY_TASK_COUNT tasks but the selection is cut into" \
        "$shards shards: submit with --array=0-$((shards - 1))" >&2
    exit 2
fi

# era5 runs in the background so that this script can pass signals on: bash runs a trap only
# once the foreground command has ended, and a wait returns as soon as a trapped signal arrives.
era5 sync "${selection[@]}" --dest "$dest" --shard "auto/$shards" --no-progress --json &
pid=$!
signalled=false
trap 'signalled=true; kill -TERM "$pid" 2>/dev/null' USR1 TERM INT
status=0
wait "$pid" || status=$?
# A wait cut short by a signal returns 128 + its number: wait again for era5's own status.
while [ "$signalled" = true ]; do
    signalled=false
    status=0
    wait "$pid" || status=$?
done
trap - USR1 TERM INT

case $status in
    0)
        echo "era5-sync: task $task: shard done"
        exit 0
        ;;
    2)
        echo "era5-sync: task $task: era5 refused its input (exit 2, the line above says which" \
            "flag or value); not requeued: running again unchanged fails the same way" >&2
        exit 2
        ;;
    1 | 3 | 130)
        restarts=${SLURM_RESTART_COUNT:-0}
        if [ "$restarts" -ge "$max_requeues" ]; then
            echo "era5-sync: task $task: era5 exited $status after $restarts requeues;" \
                "not requeued again (ERA5_MAX_REQUEUES=$max_requeues)" >&2
            exit "$status"
        fi
        echo "era5-sync: task $task: era5 exited $status; requeued ($((restarts + 1)) of" \
            "$max_requeues), the next run resumes" >&2
        # This array element alone (the array's job id, then the task's). Slurm ends this run;
        # it refuses a task being cancelled (scancel), which then stays cancelled.
        scontrol requeue "$task" || echo "era5-sync: task $task: scontrol requeue failed" >&2
        exit "$status"
        ;;
    *)
        echo "era5-sync: task $task: era5 ended with status $status (a crash or a kill);" \
            "not requeued" >&2
        exit "$status"
        ;;
esac
