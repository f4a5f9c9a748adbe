"""`sngin cron [HOST] [--run N]`: scheduled runs as a table (the admin API's cron routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sngin.client.output import show

if TYPE_CHECKING:
    import argparse

    import httpx


def run_cron(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.run is not None:
        if args.host is None:
            print("sngin cron: --run needs the HOST")
            return 2
        answer = client.post(f"/__sngin/code/{args.host}/cron/run", json={"index": args.run})
        return show(answer, as_json=args.json, line=lambda d: run_line(d["run"]))
    if args.host is None:
        answer = client.get("/__sngin/cron")
        if answer.status_code != 200 or args.json:
            return show(answer, as_json=args.json)
        sites = answer.json()["tenants"]
        if not sites:
            print("no site has scheduled runs")
        for site in sites:
            print_site(site)
        return 0
    answer = client.get(f"/__sngin/code/{args.host}/cron")
    if answer.status_code != 200 or args.json:
        return show(answer, as_json=args.json)
    site = answer.json()
    print_site(site)
    if site["runs"]:
        print("last runs:")
        for run in site["runs"]:
            print("  " + run_line(run))
    return 0


def print_site(site: dict[str, Any]) -> None:
    print(site["host"])
    for entry in site["entries"]:
        print(f"  [{entry['index']}] {entry['schedule']:<20} {entry['path']:<24} "
              f"{entry['timezone']:<16} next {entry['next']}")  # fmt: skip
    for problem in site["invalid"]:
        print(f"  not used: {problem}")


def run_line(run: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    tick = datetime.fromtimestamp(run["tick"], UTC).isoformat(timespec="seconds")
    manual = " (by hand)" if run.get("manual") else ""
    error = f": {run['error']}" if run.get("error") else ""
    took = f" {run['duration_ms']:.0f} ms" if run.get("duration_ms") else ""
    outcome = f"{run['outcome']} {run['status']}"
    return f"{tick} [{run['index']}] {run['path']} {outcome}{took}{manual}{error}"
