#!/usr/bin/env python3
"""Two era5 builds on bench/run.py's workloads, alternating, in both verification modes.

bench/run.py compares era5 with s5cmd, rclone and the AWS CLI (and another build, but only with
--verify size). To see whether a change costs time in either mode without installing the other
tools, this runs an old and a new binary on the same data and sendfile endpoint, alternating
which goes first, and prints medians and new/old ratios of wall and CPU time.

Usage: bench/ab.py --old PATH [--new PATH] [--rounds N] [--out DIR]
Needs target/release/era5-bench-server (cargo build --release --workspace).
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402


def sync_command(binary, endpoint, dest, workload, verify):
    if workload == "month":
        selection = ["--product", "e5.oper.an.sfc", "--start", "2024-01", "--end", "2024-01"]
    else:
        selection = ["--product", "e5.oper.an.pl", "--var", "t", "--start", "2024-01-01", "--end", "2024-01-01"]
    command = [binary, "sync", *selection, "--endpoint", endpoint, "--dest", dest, "--no-progress",
               "--connections", str(bench.CONNECTIONS)]
    return command + (["--verify", "size"] if verify == "size" else [])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default=f"{bench.ROOT}/target/release/era5")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="/tmp/era5-bench-ab")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    wanted = bench.make_data(os.path.join(args.out, "data"))
    month = sum(size for key, size in wanted.items() if key.startswith(bench.MONTH_PREFIX))
    server, port = bench.start_server("light", os.path.join(args.out, "data"), args.out)
    endpoint = f"http://127.0.0.1:{port}"
    env = bench.tool_env(endpoint, "/dev/null")
    dest = os.path.join(args.out, "dest")
    print("| workload | verify | old wall s | new wall s | new/old wall | new/old CPU |")
    print("|---|---|---:|---:|---:|---:|")
    try:
        for workload, expected in [("month", month), ("big", wanted[bench.BIG_KEY])]:
            for verify in ["size", "full"]:
                runs = {"old": [], "new": []}
                # One untimed run first, so neither pays for a cold start.
                bench.run_tool("warm-up", sync_command(args.new, endpoint, dest, workload, verify), env, port,
                               dest, expected, args.out)
                for round_number in range(args.rounds):
                    order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
                    for build in order:
                        binary = args.old if build == "old" else args.new
                        command = sync_command(binary, endpoint, dest, workload, verify)
                        runs[build].append(bench.run_tool(build, command, env, port, dest, expected, args.out))
                wall = {b: statistics.median(r["wall_s"] for r in runs[b]) for b in runs}
                cpu = {b: statistics.median(r["cpu_s"] for r in runs[b]) for b in runs}
                print(f"| {workload} | {verify} | {wall['old']:.2f} | {wall['new']:.2f} | "
                      f"{wall['new'] / wall['old']:.2f} | {cpu['new'] / cpu['old']:.2f} |", flush=True)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
