#!/usr/bin/env python3
"""Checks that the Grafana dashboard and the alert rules parse and only query metrics that
era5 exports (the names dashboards depend on), so a renamed metric cannot silently blank a
panel or disarm an alert."""

import json
import re
import sys

import yaml

EXPORTED = {
    "era5_bytes_downloaded_total", "era5_objects_completed_total",
    "era5_s3_connections_open", "era5_s3_connections_in_use", "era5_s3_concurrency",
    "era5_s3_requests_in_flight", "era5_s3_hedged_requests_total", "era5_s3_hedges_won_total",
    "era5_s3_duplicate_bytes_total",
    "era5_s3_retries_total", "era5_s3_stall_timeouts_total", "era5_verify_failures_total",
    "era5_checksum_contradictions_total",
    "era5_leases", "era5_lease_renew_seconds_bucket", "era5_lease_renew_seconds_count",
    "era5_lease_renew_seconds_sum", "era5_workers_connected",
    "era5_follow_passes_total", "era5_follow_last_success_timestamp_seconds",
    "era5_follow_interval_seconds",
}


def expressions(dashboard_path, rules_path):
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel '{panel['title']}'", target["expr"]
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def main():
    problems = []
    for where, expr in expressions(sys.argv[1], sys.argv[2]):
        used = set(re.findall(r"\bera5_[a-z0-9_]+", expr))
        if not used:
            problems.append(f"{where}: queries no era5 metric")
        for name in used - EXPORTED:
            problems.append(f"{where}: unknown metric {name}")
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
