#!/usr/bin/env python3
"""The whole ERA5 archive through one cluster, on this machine (run it with bench/archive.sh).

Starts era5-bench-server --archive (about 0.8 M keys from the catalog, 1940-2025, tiny
bodies), a redis-server (AOF on, as deployed), a coordinator and N workers (8 by default) with
their sessions and progress reports, all writing into one DEST. Then:

1. submits the whole archive (every product, 1940-01 to 2025-12) and records the submit time
   and Redis memory per lease and per object (used_memory before and after, no worker yet);
2. starts the workers and, every second until the job completes, times `era5 status JOB` (the
   summary) and samples Redis memory; once, midway, times a full `era5 status JOB --leases`;
3. records objects per second end to end (workers started to job complete), CPU seconds of
   every process (coordinator CPU per 1,000 objects), renew latency p50/p99 (the
   coordinator's era5_lease_renew_seconds histogram, and the workers' own), and the peak RSS
   (VmHWM) of every process;
   beside the workers, 1,000 simulated sessions (era5-lease-bench sessions, 2 leases each,
   progress every second, renewals every 10 s) run for the first 150 s: their renew p50/p99 is
   renew latency under load, and objects/s is given with and without them;
4. re-runs `era5 sync` over the complete mirror (the workers' manifests plus 0.8 M files) with
   the same selection: wall time, peak RSS and the requests it made (from the server's
   counters: lists, HEADs, GETs; a complete mirror needs no GET).

Prints one JSON line per figure and writes them all to OUT/results.json.

Usage: bench/archive.sh [--skip-build] [--workers N] [--out DIR] [--keep]
                        [--first-month YYYY-MM] [--last-month YYYY-MM] [--no-sync]
                        [--sessions N] [--sessions-seconds S]
A short trial: bench/archive.sh --first-month 2024-01 --last-month 2024-12
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ERA5_BENCH_BIN: another build's era5 (with this one's era5-bench-server and era5-lease-bench
# copied beside it), to compare two builds on the same machine.
BIN = os.environ.get("ERA5_BENCH_BIN", os.path.join(ROOT, "target", "release"))
PRODUCTS = ",".join([
    "e5.oper.an.pl", "e5.oper.an.sfc", "e5.oper.an.vinteg", "e5.oper.fc.sfc.accumu",
    "e5.oper.fc.sfc.meanflux", "e5.oper.fc.sfc.instan", "e5.oper.fc.sfc.minmax",
    "e5.oper.invariant",
])
TICKS = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"archive: {message}", file=sys.stderr, flush=True)


def emit(results, name, **fields):
    """Records and prints one figure."""
    record = {"figure": name, **fields}
    results.append(record)
    print(json.dumps(record), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"archive: timed out waiting for {what}")
        time.sleep(0.1)


def cpu_seconds(pid):
    """User + system CPU seconds of a live process (children not included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def redis_info(port, section):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", section],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def http_get(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def histogram_quantiles(text, metric, quantiles):
    """Quantiles from a Prometheus histogram's buckets (upper bound of the bucket reached),
    summed over every series of `metric`."""
    buckets = {}
    for line in text.splitlines():
        match = re.match(rf'{metric}_bucket\{{.*le="([^"]+)".*\}} (\S+)', line)
        if match:
            bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
            buckets[bound] = buckets.get(bound, 0) + float(match.group(2))
    if not buckets:
        return {q: None for q in quantiles}
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total == 0:
        return {q: None for q in quantiles}
    answer = {}
    for q in quantiles:
        answer[q] = next((bound for bound, count in ordered if count >= q * total), None)
    answer["count"] = total
    return answer


class Processes:
    """Children started by the benchmark, stopped (by pid) at the end."""

    def __init__(self, out):
        self.out = out
        self.children = {}

    def start(self, name, argv, env=None):
        log_file = open(os.path.join(self.out, f"{name}.log"), "w")
        child = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})})
        self.children[name] = child
        return child

    def stop_all(self):
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def era5(*args, **kwargs):
    return subprocess.run([os.path.join(BIN, "era5"), *args], capture_output=True, text=True,
                          **kwargs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep DEST and the logs")
    parser.add_argument("--first-month", default="1940-01")
    parser.add_argument("--last-month", default="2025-12")
    parser.add_argument("--no-sync", action="store_true", help="skip the sync re-run")
    parser.add_argument("--sessions", type=int, default=1000,
                        help="simulated sessions (era5-lease-bench) beside the workers; 0: none")
    parser.add_argument("--sessions-seconds", type=int, default=150)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = args.out or tempfile.mkdtemp(prefix="era5-archive-")
    os.makedirs(out, exist_ok=True)
    dest = os.path.join(out, "dest")
    log(f"working in {out}")
    results = []
    procs = Processes(out)
    try:
        run(args, out, dest, procs, results)
    finally:
        procs.stop_all()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)
        log(f"results in {out}/results.json")


def run(args, out, dest, procs, results):
    s3_port, redis_port, grpc_port, http_port = (free_port() for _ in range(4))
    server = procs.start("bench-server", [
        os.path.join(BIN, "era5-bench-server"), "--archive", "--listen", f"127.0.0.1:{s3_port}",
        "--first-month", args.first_month, "--last-month", args.last_month])
    server_log = os.path.join(out, "bench-server.log")
    wait_for("the bench server", lambda: "serving" in open(server_log).read())
    keys = int(re.search(r"serving (\d+) objects", open(server_log).read()).group(1))
    endpoint = f"http://127.0.0.1:{s3_port}"
    redis = procs.start("redis", [
        "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", out])
    wait_for("redis", lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"],
                                             capture_output=True).returncode == 0)
    coordinator = procs.start("coordinator", [
        os.path.join(BIN, "era5"), "coordinator", "--listen", f"127.0.0.1:{grpc_port}",
        "--redis", f"redis://127.0.0.1:{redis_port}/", "--http", f"127.0.0.1:{http_port}",
        "--endpoint", endpoint])
    coordinator_log = os.path.join(out, "coordinator.log")
    wait_for("the coordinator", lambda: "coordinator started" in open(coordinator_log).read())
    url = f"http://127.0.0.1:{grpc_port}"

    # The simulated sessions take their leases first (their job is then the oldest and fully
    # granted, so the workers never get its work), then renew and report beside the workers.
    sessions = None
    if args.sessions:
        sessions = procs.start("lease-bench", [
            os.path.join(BIN, "era5-lease-bench"), "sessions", "--coordinator",
            f"http://127.0.0.1:{grpc_port}", "--redis", f"redis://127.0.0.1:{redis_port}/",
            "--sessions", str(args.sessions), "--leases", "2",
            "--seconds", str(args.sessions_seconds)])
        bench_log = os.path.join(out, "lease-bench.log")
        wait_for("the sessions' leases", lambda: "leases held" in open(bench_log).read(), 120)
        sessions_started = time.monotonic()

    # 1. Submit, with no worker yet: the job's own Redis footprint.
    before = int(redis_info(redis_port, "memory")["used_memory"])
    submitted = time.monotonic()
    submit = era5("submit", "--coordinator", url, "--product", PRODUCTS,
                  "--start", args.first_month, "--end", args.last_month, "--endpoint", endpoint)
    if submit.returncode != 0:
        raise SystemExit(f"archive: submit failed: {submit.stderr}")
    submit_s = time.monotonic() - submitted
    job = submit.stdout.strip().splitlines()[-1]
    summary = json.loads(era5("status", "--coordinator", url, job, "--json").stdout)["jobs"][0]
    leases = sum(summary["leases"].values())
    objects = summary["objects_total"]
    after = int(redis_info(redis_port, "memory")["used_memory"])
    emit(results, "submit", keys_served=keys, objects=objects, leases=leases,
         seconds=round(submit_s, 2), coordinator_peak_rss_mib=round(peak_rss_mib(coordinator.pid)))
    emit(results, "redis_memory", bytes_per_lease=round((after - before) / leases),
         bytes_per_object=round((after - before) / objects, 1),
         job_mib=round((after - before) / 2**20, 1))

    # 2. The workers, and status while they run.
    cpu_before = {name: cpu_seconds(p.pid) for name, p in procs.children.items()}
    worker_http = []
    for index in range(args.workers):
        port = free_port()
        worker_http.append(port)
        procs.start(f"worker-{index}", [
            os.path.join(BIN, "era5"), "worker", "--coordinator", url, "--dest", dest,
            "--name", f"w{index}", "--http", f"127.0.0.1:{port}"])
    started = time.monotonic()
    status_ms, full_walk = [], None
    timeline = []  # (seconds since the workers started, leases done)
    peak_redis = after
    state = "pending"
    done = 0
    while state not in ("complete", "failed", "cancelled"):
        time.sleep(1)
        timed = time.monotonic()
        text = era5("status", "--coordinator", url, job)
        status_ms.append((time.monotonic() - timed) * 1e3)
        if text.returncode != 0:
            log(f"status failed: {text.stderr.strip()}")
            continue
        row = next(line for line in text.stdout.splitlines() if line.startswith(job))
        fields = row.split()
        state, done = fields[1], int(fields[4])
        timeline.append((time.monotonic() - started, done))
        peak_redis = max(peak_redis, int(redis_info(redis_port, "memory")["used_memory"]))
        if full_walk is None and done >= leases // 2:
            timed = time.monotonic()
            walk = era5("status", "--coordinator", url, job, "--leases")
            full_walk = {"ms": round((time.monotonic() - timed) * 1e3),
                         "lines": walk.stdout.count("\n"), "exit": walk.returncode}
        if len(status_ms) % 30 == 0:
            log(f"{state}: {done}/{leases} leases done after {time.monotonic() - started:.0f} s")
    elapsed = time.monotonic() - started
    if state != "complete":
        raise SystemExit(f"archive: the job ended {state}")
    cpu = {name: round(cpu_seconds(p.pid) - cpu_before.get(name, 0.0), 1)
           for name, p in procs.children.items() if p.poll() is None}
    status_ms.sort()
    emit(results, "throughput", objects=objects, seconds=round(elapsed, 1),
         objects_per_sec=round(objects / elapsed), workers=args.workers)
    if sessions is not None:
        sessions.wait(timeout=args.sessions_seconds + 120)
        line = [l for l in open(os.path.join(out, "lease-bench.log")) if l.startswith("{")][-1]
        bench = json.loads(line)
        # Objects per second while the sessions ran, and after (leases done x objects/lease).
        window_end = sessions_started + bench["seconds"] - started
        per_lease = objects / leases
        def rate(lo, hi):
            inside = [(t, d) for t, d in timeline if lo <= t <= hi]
            if len(inside) < 2:
                return None
            (t0, d0), (t1, d1) = inside[0], inside[-1]
            return round((d1 - d0) * per_lease / (t1 - t0)) if t1 > t0 else None
        emit(results, "sessions_beside_the_run", **{k: v for k, v in bench.items() if k != "bench"},
             overlap_s=round(max(0.0, min(window_end, elapsed)), 1),
             objects_per_sec_with_sessions=rate(0, window_end),
             objects_per_sec_after=rate(window_end, elapsed))
    emit(results, "cpu_seconds", **cpu,
         workers_total=round(sum(v for k, v in cpu.items() if k.startswith("worker")), 1),
         coordinator_per_1000_objects=round(cpu["coordinator"] / objects * 1000, 3),
         redis_per_1000_objects=round(cpu["redis"] / objects * 1000, 3))
    emit(results, "status_latency_ms", samples=len(status_ms),
         p50=round(status_ms[len(status_ms) // 2]), p99=round(status_ms[int(len(status_ms) * 0.99)]),
         max=round(status_ms[-1]), full_leases_walk=full_walk)
    metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")
    server_side = histogram_quantiles(metrics, "era5_lease_renew_seconds", [0.5, 0.99])
    worker_text = "\n".join(http_get(f"http://127.0.0.1:{p}/metrics") for p in worker_http)
    worker_side = histogram_quantiles(worker_text, "era5_lease_renew_seconds", [0.5, 0.99])
    emit(results, "renew_seconds", note="bucket upper bounds",
         coordinator_p50=server_side[0.5], coordinator_p99=server_side[0.99],
         coordinator_count=server_side.get("count"),
         workers_p50=worker_side[0.5], workers_p99=worker_side[0.99],
         workers_count=worker_side.get("count"))
    aof = os.path.join(out, "appendonlydir")
    aof_bytes = sum(os.path.getsize(os.path.join(aof, f)) for f in os.listdir(aof)) \
        if os.path.isdir(aof) else 0
    emit(results, "redis_peak", used_memory_mib=round(peak_redis / 2**20, 1),
         aof_mib=round(aof_bytes / 2**20, 1))
    emit(results, "peak_rss_mib", **{name: round(peak_rss_mib(p.pid))
                                      for name, p in procs.children.items() if p.poll() is None})

    # 4. The re-run over the complete mirror: no GET allowed.
    for name in [n for n in procs.children if n.startswith("worker")]:
        child = procs.children.pop(name)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    if args.no_sync:
        return
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/_stats", method="POST"), timeout=10)
    timed = time.monotonic()
    sync = subprocess.run(
        ["/usr/bin/time", "-f", "%M %e %U %S", os.path.join(BIN, "era5"), "sync",
         "--product", PRODUCTS, "--start", args.first_month, "--end", args.last_month,
         "--dest", dest, "--endpoint", endpoint, "--no-progress"],
        capture_output=True, text=True)
    wall = time.monotonic() - timed
    with open(os.path.join(out, "sync.log"), "w") as f:
        f.write(sync.stdout + sync.stderr)
    max_kib, _, user, system = sync.stderr.strip().splitlines()[-1].split()
    requests = json.loads(http_get(f"{endpoint}/_stats"))
    # The pass (plan, triage, settle) as the summary times it; the rest is listing and start-up.
    pass_s = re.search(r"received in ([\d.]+) s", sync.stdout)
    emit(results, "sync_rerun", exit=sync.returncode, seconds=round(wall, 2),
         pass_seconds=float(pass_s.group(1)) if pass_s else None,
         peak_rss_mib=round(int(max_kib) / 1024), cpu_seconds=round(float(user) + float(system), 1),
         lists=requests["list"], heads=requests["head"], gets=requests["get"],
         summary=sync.stdout.strip().splitlines()[:2])


if __name__ == "__main__":
    main()
