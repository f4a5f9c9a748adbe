"""`sngin run`: the documented example, tenant modules from the code dir, scripts named by path."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sngin.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_example_runs_from_a_fresh_clone(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = (ROOT / "docs" / "admin.md").read_text()
    command = re.search(r"^\.venv/bin/sngin (run .*)$", text, re.MULTILINE)
    assert command is not None
    assert main(shlex.split(command.group(1)), env={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("HTTP 200\n")
    assert out.endswith("Hello, dev!\n")


def test_the_help_example_file_exists():
    from sngin.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    example = re.search(r"e\.g\.\s+(\S+\.lua)", help_text)
    assert example is not None
    assert (ROOT / example.group(1)).is_file()


def test_require_finds_the_tenants_modules_in_the_code_dir(capsys, tmp_path):
    site = tmp_path / "api.test"
    (site / "lib").mkdir(parents=True)
    (site / "lib" / "util.lua").write_text("return {greet = function() return 'from util' end}")
    (site / "index.lua").write_text("return require('lib.util').greet()")
    env = {"SNGIN_CODE_DIR": str(tmp_path)}
    assert main(["run", str(site / "index.lua")], env=env) == 0  # tenant from the folder
    assert capsys.readouterr().out.endswith("\nfrom util\n")
    elsewhere = tmp_path / "elsewhere.lua"
    elsewhere.write_text("return require('lib.util').greet()")
    assert main(["run", str(elsewhere), "--host", "api.test"], env=env) == 0
    assert capsys.readouterr().out.endswith("\nfrom util\n")


def test_errors_name_the_script_by_its_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("broken.lua").write_text("local t = nil\nreturn t.x")
    assert main(["run", "broken.lua"], env={}) == 1
    out = capsys.readouterr().out
    assert out == "HTTP 500\n\nbroken.lua:2: attempt to index local 't' (a nil value)\n"


def test_sngin_run_uses_the_same_storage_as_the_server(capsys, tmp_path):
    site = tmp_path / "api.test"
    site.mkdir()
    (site / "index.lua").write_text("storage.runs = (storage.runs or 0) + 1 return storage.runs")
    env = {"SNGIN_CODE_DIR": str(tmp_path), "SNGIN_DATA_PATH": str(tmp_path / "data")}
    for expected in ("1", "2"):
        assert main(["run", str(site / "index.lua")], env=env) == 0
        assert capsys.readouterr().out.endswith(f"\n{expected}\n")
    assert (tmp_path / "data" / "storage.db").exists()
