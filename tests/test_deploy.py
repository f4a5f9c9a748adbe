"""`sngin deploy`: a local sites folder uploaded through the management API, to S3 (moto) and
to the folder store; only what changed, deletions only with --delete, a dry run changes
nothing, a second run uploads nothing, and a file changed on the server meanwhile is a
conflict rather than overwritten."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from sngin.cli import main
from sngin.config import S3Settings
from tests.support import TOKEN, code_cache, running

if TYPE_CHECKING:
    from pathlib import Path


def write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


async def deploy(srv, folder: Path, *flags: str) -> int:
    argv = ["deploy", str(folder), "--url", srv.url, "--token", TOKEN, *flags]
    return await trio.to_thread.run_sync(main, argv, {})


def writes(proxy) -> int:
    """PUT and DELETE requests S3 received through the counting proxy."""
    return sum(n for (method, _, _), n in proxy.counts.items() if method in ("PUT", "DELETE"))


def table(out: str) -> dict[str, list[int]]:
    """HOST -> [added, changed, deleted, unchanged] from the summary table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1].isdigit():
            rows[parts[0]] = [int(n) for n in parts[1:]]
    return rows


async def test_deploy_to_s3_uploads_only_what_changed(tmp_path, proxy, bucket, capsys):
    local = tmp_path / "local"
    write(local, {
        "one.test/index.lua": "return 'one'",
        "one.test/api/index.lua": "return 'api'",
        "one.test/lib/util.lua": "return {}",
        "one.test/README.md": "not code: skipped",
        "two.test/index.lua": "return 'two'",
    })  # fmt: skip
    changes = {"s3": S3Settings(bucket=bucket.name, prefix="code")}
    async with (
        code_cache(proxy, bucket, prefix="code", ttl_s=3600) as cache,
        running(tmp_path / "srv", store=cache, admin_token=TOKEN, settings_changes=changes) as srv,
    ):
        assert await deploy(srv, local, "--dry-run") == 0
        out = capsys.readouterr().out
        assert "add one.test/api/index.lua" in out
        assert table(out) == {"one.test": [3, 0, 0, 0], "two.test": [1, 0, 0, 0]}
        assert "dry run: nothing was changed" in out
        assert (await srv.get("/", host="one.test")).status_code == 404

        assert await deploy(srv, local) == 0
        assert table(capsys.readouterr().out) == {
            "one.test": [3, 0, 0, 0],
            "two.test": [1, 0, 0, 0],
        }
        assert (await srv.get("/api", host="one.test")).text == "api"
        assert bucket.client.get_object(Bucket=bucket.name, Key="code/two.test/index.lua")

        puts = proxy.requests.copy() if hasattr(proxy, "requests") else None
        assert await deploy(srv, local) == 0  # a second run: nothing to upload
        assert table(capsys.readouterr().out) == {
            "one.test": [0, 0, 0, 3],
            "two.test": [0, 0, 0, 1],
        }
        del puts

        write(local, {"one.test/index.lua": "return 'one, again'"})
        (local / "one.test" / "api" / "index.lua").unlink()
        assert await deploy(srv, local, "--host", "one.test") == 0
        out = capsys.readouterr().out
        assert table(out) == {"one.test": [0, 1, 0, 1]}
        assert "1 files on the server are not in the folder: kept" in out
        assert (await srv.get("/", host="one.test")).text == "one, again"  # purged
        assert (await srv.get("/api", host="one.test")).text == "api"

        assert await deploy(srv, local, "--host", "one.test", "--delete") == 0
        assert table(capsys.readouterr().out) == {"one.test": [0, 0, 1, 2]}
        assert (await srv.get("/api", host="one.test")).status_code == 404


async def test_a_file_changed_on_the_server_meanwhile_is_a_conflict(tmp_path, capsys, monkeypatch):
    from sngin.client import deploy as deploy_module

    local = tmp_path / "local"
    write(local, {"c.test/index.lua": "return 'mine'"})
    async with running(tmp_path / "srv", admin_token=TOKEN) as srv:
        served = tmp_path / "srv" / "c.test"
        write(served.parent, {"c.test/index.lua": "return 'theirs'"})
        original = deploy_module.apply

        def change_first(client, plan, progress):
            (served / "index.lua").write_text("return 'changed meanwhile'")
            original(client, plan, progress)

        monkeypatch.setattr(deploy_module, "apply", change_first)
        assert await deploy(srv, local) == 1
        out = capsys.readouterr().out
        assert "left as they are: c.test/index.lua" in out
        assert (served / "index.lua").read_text() == "return 'changed meanwhile'"


@pytest.mark.parametrize("flags", [["--host", "absent.test"], []])
async def test_a_missing_folder_or_host_is_one_line(tmp_path, capsys, flags):
    async with running(tmp_path / "srv", admin_token=TOKEN) as srv:
        folder = tmp_path / "local"
        if flags:  # a folder without that host's folder; else no folder at all
            folder.mkdir()
        assert await deploy(srv, folder, *flags) == 2
        assert capsys.readouterr().err.startswith("sngin: ")


async def test_one_sites_folder_is_refused_without_host_and_deployed_with_it(tmp_path, capsys):
    async with running(tmp_path / "srv", admin_token=TOKEN) as srv:
        site = tmp_path / "sites" / "my.example"
        write(site, {"index.lua": "return 'home'", "about/index.lua": "return 'about'"})
        # Its subfolders are not hosts: refused, with both right commands.
        assert await deploy(srv, site, "--dry-run") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "looks like one site's folder" in err
        assert f"`sngin deploy {site.parent} --host my.example`" in err
        assert f"`sngin deploy {site} --host my.example`" in err
        listed = await srv.client.get(srv.url + "/__sngin/code", headers={
            "Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert "about" not in listed.json()["tenants"]
        # The folder itself, named as its site: deployed as my.example.
        assert await deploy(srv, site, "--host", "my.example") == 0
        assert (await srv.get("/about", host="my.example")).text == "about"
        assert (await srv.get("/", host="my.example")).text == "home"
        # The folder of sites with --host still picks that one folder.
        write(site, {"index.lua": "return 'home 2'"})
        assert await deploy(srv, site.parent, "--host", "my.example") == 0
        assert (await srv.get("/", host="my.example")).text == "home 2"
