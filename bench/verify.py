#!/usr/bin/env python3
"""Benchmark `era5 verify` against md5sum run over the same files, one process per core.

Builds a synthetic mirror (FILES files of SIZE each, with plain MD5 ETags recorded in its
manifest, as `era5 sync` leaves it), then alternates, for several rounds:

  era5    era5 verify --dest MIRROR --no-progress   (checks every file against its record)
  md5sum  find MIRROR -name '*.nc' | xargs -P $(nproc) -n 1 md5sum   (hashes, compares nothing)

Both read from the page cache after an untimed warm-up, so the figure compares hashing and
scheduling, not the disk. Medians of the rounds: wall seconds, throughput, and era5 / md5sum.

Usage: bench/verify.py [--files N] [--size-mib M] [--rounds R] [--era5 PATH] [--dir DIR]
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def build_mirror(root, files, size):
    """FILES deterministic files under ERA5 keys and a manifest recording their MD5 ETags."""
    state = os.path.join(root, ".era5")
    os.makedirs(state, exist_ok=True)
    block = bytes(range(256)) * (MIB // 256)
    records = []
    for index in range(files):
        day = index % 28 + 1
        month = index // 28 + 1
        key = (
            f"e5.oper.an.pl/2024{month:02d}/e5.oper.an.pl.128_130_t.ll025sc."
            f"2024{month:02d}{day:02d}00_2024{month:02d}{day:02d}23.nc"
        )
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest = hashlib.md5()
        with open(path, "wb") as out:
            for chunk in range(size // MIB):
                # Each MiB differs, so no two files or chunks hash alike.
                data = index.to_bytes(4, "little") + chunk.to_bytes(4, "little") + block[8:]
                out.write(data)
                digest.update(data)
        records.append(
            {
                "key": key,
                "size": size,
                "etag": digest.hexdigest(),
                "checksum": None,
                "verified": "etag",
                "verified_at": "2026-01-01T00:00:00Z",
            }
        )
    with open(os.path.join(state, "manifest.jsonl"), "w") as manifest:
        for record in records:
            manifest.write(json.dumps(record) + "\n")


def timed(command):
    started = time.monotonic()
    result = subprocess.run(command, shell=isinstance(command, str), capture_output=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{command} failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--era5", default=os.path.join(ROOT, "target/release/era5"))
    parser.add_argument("--dir", default="/tmp/era5-verify-bench")
    args = parser.parse_args()
    if not os.path.exists(args.era5):
        sys.exit(f"{args.era5} is missing: cargo build --release -p cli")
    size = args.size_mib * MIB
    total = args.files * size
    shutil.rmtree(args.dir, ignore_errors=True)
    print(f"building a mirror of {args.files} files of {args.size_mib} MiB in {args.dir}")
    build_mirror(args.dir, args.files, size)

    cores = os.cpu_count() or 2
    tools = {
        "era5": [args.era5, "verify", "--dest", args.dir, "--no-progress"],
        "md5sum": f"find {args.dir} -name '*.nc' -print0 | xargs -0 -P {cores} -n 1 md5sum > /dev/null",
    }
    for command in tools.values():
        timed(command)  # warm-up: the files are in the page cache for every timed round
    times = {name: [] for name in tools}
    for _ in range(args.rounds):
        for name, command in tools.items():
            times[name].append(timed(command))

    print(f"\n{args.files} files, {total / (1 << 30):.2f} GiB, {cores} cores, {args.rounds} rounds (medians)")
    print(f"{'tool':<8} {'wall s':>8} {'GiB/s':>8}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, wall in medians.items():
        print(f"{name:<8} {wall:>8.2f} {total / (1 << 30) / wall:>8.2f}")
    print(f"era5 verify wall / md5sum wall: {medians['era5'] / medians['md5sum']:.2f}x")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
