#!/usr/bin/env bash
# The whole ERA5 archive (about 0.8 M objects, tiny bodies) through one cluster on this
# machine: a synthetic-archive endpoint, redis-server, a coordinator and N workers (8 by
# default), then `era5 sync` re-run over the complete mirror. Records objects/s end to end,
# coordinator CPU per 1,000 objects, Redis memory per lease and per object, `era5 status JOB`
# latency during the run, renew p50/p99 and every process's peak RSS; one JSON line per figure
# (bench/archive.py has the details).
# Usage: bench/archive.sh [--skip-build] [--workers N] [--out DIR] [--keep] [--no-sync]
#                         [--first-month YYYY-MM] [--last-month YYYY-MM]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --skip-build "* ]]; then
    cargo build --release -p cli -p bench
fi
exec python3 bench/archive.py "$@"
