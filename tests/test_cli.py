"""The ffavatar command in-process: head export, synth, data pack/info, help texts, errors."""

from __future__ import annotations

import json

import pytest

from ffavatar.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: ffavatar " + name in capsys.readouterr().out


def test_head_synth_pack_info(tmp_path, capsys):
    assert main(["head", "-o", str(tmp_path / "head")]) == 0
    stats = json.loads((tmp_path / "head" / "head_stats.json").read_text())
    assert stats["vertices"] >= 5000 and stats["expression_components"] >= 50 and stats["landmarks"] == 68
    assert (tmp_path / "head" / "head_jaw_open_smile.obj").read_text().count("\nf ") == stats["faces"]
    assert main(["synth", "--identities", "2", "--frames", "1", "--views", "2", "--size", "32", "-o", str(tmp_path / "ds")]) == 0
    assert main(["data", "pack", str(tmp_path / "ds"), "-o", str(tmp_path / "shards"), "--per-shard", "1"]) == 0
    assert len(list((tmp_path / "shards").glob("shard-*.tar"))) == 2
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    assert "2 identities, 4 images" in capsys.readouterr().out


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    assert main(["head", "--flame", str(tmp_path / "nope.pkl"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error [flame_file]" in err and "nope.pkl" in err
    assert main(["data", "info", str(tmp_path)]) == 2
