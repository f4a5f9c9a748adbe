"""`sngin deploy DIR [--host HOST] [--delete] [--dry-run]`: upload a local sites folder (one folder
per host, like the code root) through the management API.

Through the API rather than straight to S3: it works the same on the folder store and on S3,
with the operator's admin token or a tenant's own token (no cloud credentials on a developer's
machine), every write is conditional (a file someone changed since the listing is reported as a
conflict, not overwritten), and every write is purged on every node as it lands.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sngin.code.files import content_hash, file_path
from sngin.errors import BadRequest
from sngin.names import CONFIG_NAME, tenant_of

if TYPE_CHECKING:
    import argparse

    import httpx


@dataclass
class HostPlan:
    host: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # only with --delete
    kept: list[str] = field(default_factory=list)  # on the server, not here, no --delete
    unchanged: list[str] = field(default_factory=list)
    remote: dict[str, str] = field(default_factory=dict)  # path -> etag on the server
    local: dict[str, bytes] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    @property
    def work(self) -> int:
        return len(self.added) + len(self.changed) + len(self.deleted)


def site_files(folder: Path) -> dict[str, bytes]:
    """{path: bytes} of one site's folder (files the API would refuse, a README, are skipped)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        try:
            file_path(relative)
        except BadRequest:
            continue
        if path.is_file() and not path.is_symlink():
            files[relative] = path.read_bytes()
    return files


def host_folders(root: Path) -> list[Path]:
    """The subfolders of root named as a site's host is (a DNS name)."""
    found = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        try:
            if tenant_of(folder.name) == folder.name:
                found.append(folder)
        except BadRequest:
            continue
    return found


def looks_like_a_site(root: Path) -> bool:
    """One site's folder rather than a folder of sites: a script or configuration at its top,
    or no subfolder named like a host with a dot."""
    if (root / "index.lua").is_file() or (root / CONFIG_NAME).is_file():
        return True
    return not any("." in folder.name for folder in host_folders(root))


def local_sites(root: Path, only: str | None) -> dict[str, dict[str, bytes]]:
    """host -> {path: bytes} for every host folder under root; with `only` and no folder of
    that name, root itself is that site's folder."""
    if not root.is_dir():
        raise BadRequest(f"{root} is not a folder")
    if only is not None and not (root / only).is_dir():
        files = site_files(root)
        if not files:
            raise BadRequest(f"{root} has no folder {only}, and no files to deploy as {only}")
        return {tenant_of(only): files}
    return {
        folder.name: site_files(folder)
        for folder in host_folders(root)
        if only is None or folder.name == only
    }


def plan_host(
    host: str, local: dict[str, bytes], remote: dict[str, str], *, delete: bool
) -> HostPlan:
    plan = HostPlan(host, remote=remote, local=local)
    for path, data in local.items():
        etag = remote.get(path)
        if etag is None:
            plan.added.append(path)
        elif etag != content_hash(data):
            plan.changed.append(path)
        else:
            plan.unchanged.append(path)
    for path in sorted(set(remote) - set(local)):
        (plan.deleted if delete else plan.kept).append(path)
    return plan


class Progress:
    """A one-line bar on a terminal; nothing when stderr is a pipe or a file."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.shown = sys.stderr.isatty() and total > 0

    def step(self, label: str) -> None:
        self.done += 1
        if self.shown:
            filled = 30 * self.done // self.total
            bar = "#" * filled + "." * (30 - filled)
            print(f"\r[{bar}] {self.done}/{self.total} {label[:40]:40}", end="", file=sys.stderr)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def deploy(client: httpx.Client, args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if args.host is None and root.is_dir() and looks_like_a_site(root):
        site = root.resolve().name
        print(
            f"sngin: {root} looks like one site's folder, not a folder of sites: run"
            f" `sngin deploy {root.parent} --host {site}`, or"
            f" `sngin deploy {root} --host {site}`",
            file=sys.stderr,
        )
        return 1
    sites = local_sites(root, args.host)
    plans = []
    for host, files in sites.items():
        listed = client.get(f"/__sngin/code/{host}")
        if listed.status_code != 200:
            raise BadRequest(f"{host}: {listed.json().get('error', listed.status_code)}")
        remote = {entry["path"]: entry["etag"] for entry in listed.json()["files"]}
        plans.append(plan_host(host, files, remote, delete=args.delete))
    if not args.dry_run:
        progress = Progress(sum(plan.work for plan in plans))
        for plan in plans:
            apply(client, plan, progress)
        progress.close()
    print_summary(plans, dry_run=args.dry_run)
    return 1 if any(plan.conflicts for plan in plans) else 0


def apply(client: httpx.Client, plan: HostPlan, progress: Progress) -> None:
    url = f"/__sngin/code/{plan.host}/file"
    for path in plan.added + plan.changed:
        condition = (
            {"If-None-Match": "*"} if path in plan.added else {"If-Match": f'"{plan.remote[path]}"'}
        )
        answer = client.put(url, params={"path": path}, content=plan.local[path], headers=condition)
        check(answer, plan, path)
        progress.step(f"{plan.host}/{path}")
    for path in plan.deleted:
        answer = client.delete(
            url, params={"path": path}, headers={"If-Match": f'"{plan.remote[path]}"'}
        )
        check(answer, plan, path)
        progress.step(f"{plan.host}/{path}")


def check(answer: httpx.Response, plan: HostPlan, path: str) -> None:
    if answer.status_code == 412:
        plan.conflicts.append(path)  # changed on the server since the listing: left as it is
        return
    if answer.status_code not in (200, 201):
        raise BadRequest(f"{plan.host}/{path}: {answer.json().get('error', answer.status_code)}")


def print_summary(plans: list[HostPlan], *, dry_run: bool) -> None:
    if dry_run:
        for plan in plans:
            for kind in ("added", "changed", "deleted"):
                for path in getattr(plan, kind):
                    print(f"{kind[:-1] if kind != 'added' else 'add'} {plan.host}/{path}")
    header = f"{'HOST':40} {'ADDED':>6} {'CHANGED':>8} {'DELETED':>8} {'UNCHANGED':>10}"
    print(header)
    for plan in plans:
        print(f"{plan.host:40} {len(plan.added):>6} {len(plan.changed):>8} "
              f"{len(plan.deleted):>8} {len(plan.unchanged):>10}")  # fmt: skip
    kept = sum(len(plan.kept) for plan in plans)
    if kept:
        print(f"{kept} files on the server are not in the folder: kept (--delete removes them)")
    conflicts = [f"{plan.host}/{path}" for plan in plans for path in plan.conflicts]
    if conflicts:
        print(f"{len(conflicts)} files changed on the server since the listing and were left as"
              f" they are: {', '.join(conflicts)}")  # fmt: skip
    if dry_run:
        print("dry run: nothing was changed")
