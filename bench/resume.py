#!/usr/bin/env python3
"""What durable resume costs: the resume of an interrupted 2 GiB download, old build against new.

For each build and object layout, and for several rounds:
  1. `era5 sync` of one 2 GiB object from the sendfile endpoint (era5-bench-server) starts in a
     fresh DEST and is killed (SIGKILL) once half of the object is written (for `single`, the
     partial file's allocated blocks; for `multipart`, written direct into a preallocated file,
     what its resume state claims); what the resume state claims by then is reported: the new
     build claims only what is durable, so with buffered writes on a disk slower than the
     network its claim lags behind;
  2. the page cache is dropped (a resume after a power loss or a reboot starts cold; skip with
     --warm), and
  3. the same sync runs again to the end: that is the resume that is timed (wall and CPU), and
     "resumed at" is when it logs how much it resumes (for the new build, once the claimed
     parts are read back, while the missing ones already download: "claimed GiB/s" is the
     read-back's throughput).

Layouts: `multipart` (8 MiB upload parts: each part's MD5 streams, the file is written direct)
and `single` (a plain MD5 ETag: the whole-object MD5 is hashed from the page cache as parts
land). The new build reads back and hashes the parts the resume state claims before fetching the
rest; the old build trusted the digests it had saved.

Usage: bench/resume.py --old PATH [--new PATH] [--rounds N] [--warm] [--out DIR]
  --old   an era5 binary built from the commit before durable resume
  --new   the binary to measure (default target/release/era5)
Needs target/release/era5-bench-server (cargo build --release -p bench) and root for
dropping the page cache.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the main benchmark's helpers: servers, data, ports)

GIB = 1 << 30
MIB = 1 << 20


def write_object(data_dir):
    path = os.path.join(data_dir, bench.BIG_KEY)
    if os.path.exists(path) and os.path.getsize(path) == 2 * GIB:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bench.log(f"writing {bench.BIG_KEY} (2 GiB)")
    with open(path, "wb") as out:
        out.write(b"\x89HDF\r\n\x1a\n")
        left = 2 * GIB - 8
        while left > 0:
            block = os.urandom(min(left, 4 * MIB))
            out.write(block)
            left -= len(block)


def claimed_bytes(dest):
    """Bytes the resume state under DEST claims (0 if none yet)."""
    tmp = os.path.join(dest, ".era5", "tmp")
    total = 0
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
        if not name.endswith(".state"):
            continue
        try:
            with open(os.path.join(tmp, name)) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        total += sum(part["len"] for part in state["parts"].values())
    return total


def written_bytes(dest):
    """Bytes written so far to the partial file under DEST, from its allocated blocks."""
    tmp = os.path.join(dest, ".era5", "tmp")
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
        if name.endswith(".part"):
            try:
                return os.stat(os.path.join(tmp, name)).st_blocks * 512
            except OSError:
                return 0
    return 0


def sync_command(binary, endpoint, dest):
    return [binary, "sync", "--product", "e5.oper.an.pl", "--var", "t", "--start", "2024-01-01",
            "--end", "2024-01-01", "--endpoint", endpoint, "--dest", dest, "--no-progress",
            "--connections", str(bench.CONNECTIONS)]


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def one_round(binary, endpoint, dest, env, warm, layout):
    subprocess.run(["rm", "-rf", dest], check=True)
    cmd = sync_command(binary, endpoint, dest)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # A multipart download is written direct into a preallocated file, whose blocks tell
    # nothing, and syncs cheaply, so its state is fresh: its claim measures progress. A
    # single-part one is written through the page cache, whose blocks grow as it goes.
    progress = claimed_bytes if layout == "multipart" else written_bytes
    while progress(dest) < GIB:
        if first.poll() is not None:
            return None  # finished before it could be interrupted: the caller tries again
        if time.time() > deadline:
            first.kill()
            raise SystemExit("bench: the download did not reach half the object")
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    claimed = claimed_bytes(dest)
    if not warm:
        drop_caches()
    # The engine logs what it resumes: the old build at once, the new one once the claimed
    # parts are read back (the missing ones download meanwhile).
    env = dict(env, RUST_LOG="warn,engine::fetch=info")
    started = time.time()
    resume = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resumed_at = []

    def watch(stream):
        for line in stream:
            if "resuming an interrupted download" in line and not resumed_at:
                resumed_at.append(time.time() - started)

    watcher = threading.Thread(target=watch, args=(resume.stderr,), daemon=True)
    watcher.start()
    _, _, usage = os.wait4(resume.pid, 0)
    wall = time.time() - started
    watcher.join(timeout=5)
    out = resume.stdout.read()
    if "sync complete" not in out:
        raise SystemExit(f"bench: the resume did not complete:\n{out}")
    received = re.search(r"  (\S+ \S+) received", out)
    return {
        "claimed_mib": claimed / MIB,
        "until_fetching": resumed_at[0] if resumed_at else float("nan"),
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "received": received.group(1) if received else "?",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default=f"{bench.ROOT}/target/release/era5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--out", default="/tmp/era5-bench-resume")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.join(args.out, "data")
    write_object(data_dir)
    dest = os.path.join(args.out, "dest")
    rows = []
    for layout, part_mib in [("multipart", 8), ("single", 0)]:
        bench.PART_MIB = part_mib
        server, port = bench.start_server("light", data_dir, args.out)
        endpoint = f"http://127.0.0.1:{port}"
        env = bench.tool_env(endpoint, "/dev/null")
        try:
            results = {"old": [], "new": []}
            for round_number in range(args.rounds):
                # Alternate which build goes first, so drift on a shared machine hits both.
                order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
                for build in order:
                    binary = args.old if build == "old" else args.new
                    for _ in range(5):
                        result = one_round(binary, endpoint, dest, env, args.warm, layout)
                        if result is not None:
                            break
                    else:
                        raise SystemExit("bench: the sync kept finishing before it could be interrupted")
                    bench.log(f"{layout} {build} round {round_number + 1}: {result}")
                    results[build].append(result)
            for build in ["old", "new"]:
                runs = results[build]
                resumed = [r for r in runs if r["claimed_mib"] > 0 and r["until_fetching"] == r["until_fetching"]]
                rows.append((layout, build,
                             statistics.median(r["claimed_mib"] for r in runs),
                             statistics.median([r["until_fetching"] for r in resumed] or [float("nan")]),
                             statistics.median([r["claimed_mib"] / 1024 / max(r["until_fetching"], 1e-3)
                                                for r in resumed] or [float("nan")]),
                             statistics.median(r["wall"] for r in runs),
                             statistics.median(r["cpu"] for r in runs),
                             runs[len(runs) // 2]["received"]))
        finally:
            server.kill()
            server.wait()
    cache = "warm" if args.warm else "cold (page cache dropped before each resume)"
    print(f"resume of a 2 GiB object killed once half of it was written, {cache}, "
          f"medians of {args.rounds} rounds")
    print("| layout | build | claimed at kill MiB | resumed at s | claimed GiB/s | resume wall s |"
          " resume CPU s | received |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for layout, build, claimed, until, rate, wall, cpu, received in rows:
        print(f"| {layout} | {build} | {claimed:.0f} | {until:.2f} | {rate:.2f} | {wall:.2f} | {cpu:.2f} |"
              f" {received} |")


if __name__ == "__main__":
    main()
