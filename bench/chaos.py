#!/usr/bin/env python3
"""The chaos mix, timed: era5 sync through the faults the connection-cap tests inject.

The test S3 server (era5-test-s3 --fixture --chaos) holds the ERA5-shaped fixture and injects,
three times each, over the object GETs: SlowDown, a reset mid-body, a truncated body, a stalled
body (no byte after 10 kB) and a 500, plus ten bodies throttled to 2 MiB/s
(tests::faults::chaos_mix). era5 mirrors three products over five months of it with
`--connections 4 --stall-timeout 5`, the settings of the chaos tests with the stall timeout a
user would set, and every run must end complete and verified (`era5 verify` re-reads the
mirror afterwards).

The server is started afresh for each run (its faults fire a fixed number of times), and the
builds alternate. Target (issue 20): at most 15 s; about 35 s before adaptive concurrency and
hedging, since each stall then waited out its stall timeout.

Usage: bench/chaos.py [--era5 PATH] [--extra-era5 NAME=PATH ..] [--rounds N] [--skip-build]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 15.0
SELECTION = ["--product", "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu",
             "--start", "2023-12", "--end", "2024-04"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path):
    port = free_port()
    log = open(log_path, "w")
    server = subprocess.Popen(
        [f"{ROOT}/target/release/era5-test-s3", "--fixture", "--chaos", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(log_path) as f:
            if "serving" in f.read():
                return server, port
        if server.poll() is not None:
            break
        time.sleep(0.05)
    server.kill()
    raise SystemExit(f"chaos: the test server did not start; see {log_path}")


def run_once(binary, work, name):
    server, port = start_server(os.path.join(work, f"{name}-server.log"))
    dest = os.path.join(work, f"{name}-dest")
    shutil.rmtree(dest, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERA5_", "AWS_"))}
    try:
        command = [binary, "sync", *SELECTION, "--endpoint", f"http://127.0.0.1:{port}", "--dest", dest,
                   "--no-progress", "--connections", "4", "--stall-timeout", "5"]
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    if done.returncode != 0:
        raise SystemExit(f"chaos: {name} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    verified = subprocess.run([binary, "verify", "--dest", dest, "--no-progress"], env=env,
                              capture_output=True, text=True, timeout=600)
    if verified.returncode != 0:
        raise SystemExit(f"chaos: {name}'s mirror does not verify:\n{verified.stdout}\n{verified.stderr}")
    retries = next((line.split("retries: ", 1)[1].split(";")[0] for line in done.stdout.splitlines()
                    if "retries: " in line), "?")
    return wall, retries


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--era5", default=f"{ROOT}/target/release/era5")
    parser.add_argument("--extra-era5", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cli", "-p", "tests"], cwd=ROOT, check=True)
    builds = {"era5": args.era5}
    for spec in args.extra_era5:
        name, _, path = spec.partition("=")
        if not name or not os.access(path, os.X_OK):
            raise SystemExit(f"chaos: --extra-era5 wants NAME=PATH to an executable, got {spec!r}")
        builds[name] = path
    work = tempfile.mkdtemp(prefix="era5-chaos-")
    walls = {name: [] for name in builds}
    try:
        for round_index in range(args.rounds):
            names = list(builds)
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                wall, retries = run_once(builds[name], work, name)
                walls[name].append(wall)
                print(f"chaos: round {round_index + 1} {name}: {wall:.1f} s (retries: {retries})",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| build | runs | median wall s | min | max | target <= 15 s |")
    print("|---|---:|---:|---:|---:|---|")
    for name, runs in walls.items():
        median = statistics.median(runs)
        verdict = "pass" if median <= TARGET_S else "FAIL"
        print(f"| {name} | {len(runs)} | {median:.1f} | {min(runs):.1f} | {max(runs):.1f} | {verdict} |")


if __name__ == "__main__":
    main()
