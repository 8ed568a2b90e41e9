#!/usr/bin/env bash
# Control-plane benchmarks of the cluster: lease operations per second through a coordinator
# with N simulated workers; planning a job of a million objects (time and peak memory); renew
# latency while 1,000 simulated workers hold 2 leases each and report progress every second on
# their session streams; and GetJob on the whole archive at real sizes (about 40 k leases).
# Starts its own redis-server and coordinator on free ports; prints one JSON line per figure.
# Usage: bench/cluster.sh [--skip-build]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--skip-build" ]; then
    cargo build --release -p cli -p bench
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
redis_port=$(free_port)
grpc_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
trap 'kill $redis_pid ${coordinator_pid:-} 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
target/release/era5 coordinator --listen "127.0.0.1:$grpc_port" --redis "redis://127.0.0.1:$redis_port/" >"$work/coordinator.log" 2>&1 &
coordinator_pid=$!
for _ in $(seq 50); do grep -q "coordinator started" "$work/coordinator.log" && break; sleep 0.1; done
for workers in 4 16 64; do
    target/release/era5-lease-bench throughput --coordinator "http://127.0.0.1:$grpc_port" \
        --redis "redis://127.0.0.1:$redis_port/" --workers "$workers" --items 20000
done
target/release/era5-lease-bench plan --redis "redis://127.0.0.1:$redis_port/" --objects 1000000
# Each figure below on a store holding only its own job.
redis-cli -p "$redis_port" flushall >/dev/null
target/release/era5-lease-bench sessions --coordinator "http://127.0.0.1:$grpc_port" \
    --redis "redis://127.0.0.1:$redis_port/" --sessions 1000 --leases 2 --seconds 60
redis-cli -p "$redis_port" flushall >/dev/null
target/release/era5-lease-bench status --coordinator "http://127.0.0.1:$grpc_port" \
    --redis "redis://127.0.0.1:$redis_port/" --objects 798790
