#!/usr/bin/env bash
# era5 sync against a modelled remote S3 (era5-bench-server --archive with a time to first byte
# and a rate per connection), a month of pressure levels (16 variables x 31 days = 496
# objects) through 16 connections:
#
#   latency  tiny bodies, --first-byte-ms 50: time per object per connection against the
#            first-byte delay, and requests per object (the overhead target: at most one round
#            trip per object); latency_etag is the same with --verify etag, which needs no
#            HEAD (full verification HEADs every object for its S3 checksums);
#   rate     bodies at 1/200 of their modelled size (about 2.7 GB in all), --conn-rate 4MiB and
#            --first-byte-ms 50: throughput against 16 x the per-connection rate (target >= 90%).
#
# Prints one JSON line per run. Usage: bench/remote.sh [--skip-build] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --skip-build "* ]]; then
    cargo build --release -p cli -p bench
fi
keep=""
if [[ "${1:-}" == "--keep" ]]; then keep=$2; elif [[ "${2:-}" == "--keep" ]]; then keep=$3; fi
work=${keep:-$(mktemp -d)}
mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
    [[ -z "$keep" ]] && rm -rf "$work"
}
trap cleanup EXIT

connections=16
first_byte_ms=50
conn_rate=$((4 << 20))

# run NAME VERIFY SERVER-FLAGS...: one server, one sync of the month, one JSON line.
run() {
    local name=$1 verify=$2
    shift 2
    local port
    port=$(free_port)
    target/release/era5-bench-server --archive --listen "127.0.0.1:$port" \
        --first-month 2024-01 --last-month 2024-01 "$@" >"$work/$name-server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do grep -q serving "$work/$name-server.log" && break; sleep 0.1; done
    rm -rf "$work/$name-dest"
    curl -s -X POST "http://127.0.0.1:$port/_stats" >/dev/null
    local started ended
    started=$(date +%s.%N)
    target/release/era5 sync --product e5.oper.an.pl --start 2024-01 --end 2024-01 \
        --dest "$work/$name-dest" --endpoint "http://127.0.0.1:$port" \
        --connections "$connections" --verify "$verify" --no-progress >"$work/$name-sync.log" 2>&1
    ended=$(date +%s.%N)
    local stats
    stats=$(curl -s "http://127.0.0.1:$port/_stats")
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    python3 - "$name" "$started" "$ended" "$stats" "$work/$name-sync.log" \
        "$connections" "$first_byte_ms" "$conn_rate" "$verify" <<'PY'
import json, re, sys
name, started, ended, stats, log, conns, first_byte_ms, rate, verify = sys.argv[1:]
stats, conns, first_byte, rate = json.loads(stats), int(conns), int(first_byte_ms) / 1e3, int(rate)
text = open(log).read()
pass_s = float(re.search(r"received in ([\d.]+) s", text).group(1))
objects = int(re.search(r"(\d+) downloaded", text).group(1))
record = {"bench": f"remote_{name}", "verify": verify, "objects": objects, "connections": conns,
          "wall_s": round(float(ended) - float(started), 2), "pass_s": pass_s,
          "lists": stats["list"], "heads": stats["head"], "gets": stats["get"],
          "requests_per_object": round((stats["head"] + stats["get"]) / objects, 3)}
if name.startswith("latency"):
    per_object = pass_s * conns / objects
    record.update(first_byte_ms=first_byte * 1e3,
                  ms_per_object_per_connection=round(per_object * 1e3, 1),
                  overhead_ms=round((per_object - first_byte) * 1e3, 1))
else:
    achieved = stats["body_bytes"] / pass_s
    record.update(bytes=stats["body_bytes"], conn_rate=rate, bytes_per_sec=round(achieved),
                  fraction_of_connections_x_rate=round(achieved / (conns * rate), 3))
print(json.dumps(record), flush=True)
PY
}

run latency full --first-byte-ms "$first_byte_ms"
run latency_etag etag --first-byte-ms "$first_byte_ms"
run rate full --scale 0.005 --first-byte-ms "$first_byte_ms" --conn-rate "$conn_rate"
