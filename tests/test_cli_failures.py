"""Every failure of the ``ffavatar`` command ends with the documented ``error [code]: ...`` line and
exit code 2, never a traceback, and never hangs (issue 14.9): a character device as input, a folder
or a device as output, a file name too long for the file system, a disk that is full."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffavatar.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fails(capsys, argv: list[str], code: str, *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"error [{code}]: "), err[-3:]
    assert "Traceback" not in "\n".join(err)
    for w in words:
        assert w in err[-1], err[-1]
    return err[-1]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero (a character device)")
def test_a_character_device_as_input_is_refused_at_once(capsys, tmp_path):
    # reading /dev/zero never ends: it must be refused before anything reads it
    _fails(capsys, ["reconstruct", "/dev/zero", "-o", str(tmp_path / "a.ffa")], "invalid_input",
           "/dev/zero is not a regular file")
    _fails(capsys, ["animate", str(tmp_path / "a.ffa"), "--driver", "/dev/zero", "-o", str(tmp_path / "out")],
           "invalid_input", "/dev/zero is not a video file")


def test_outputs_that_are_folders_or_devices_are_refused(capsys, tmp_path):
    portrait = tmp_path / "p.png"
    portrait.write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "dir").mkdir()
    _fails(capsys, ["reconstruct", str(portrait), "-o", str(tmp_path / "dir")], "invalid_input", "is a folder")
    if Path("/dev/full").exists():  # never replace a device node by a file (as root os.replace would)
        _fails(capsys, ["reconstruct", str(portrait), "-o", "/dev/full"], "invalid_input", "not a regular file")
        assert Path("/dev/full").is_char_device()
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["head", "-o", str(tmp_path / "file")], "invalid_input", "is not a folder")


def test_a_file_name_too_long_for_the_file_system(capsys, tmp_path):
    _fails(capsys, ["head", "-o", str(tmp_path / ("x" * 300))], "invalid_input", "File name too long")


def test_a_full_disk_is_a_storage_error(tmp_path):
    """The disk fills up while the head export writes (a 4 KB file size limit: writes beyond it fail
    with EFBIG as they would with ENOSPC on a full disk)."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY)); "
            "from ffavatar.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "head", "-o", str(tmp_path / "head")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error [storage]: cannot write ") and "File too large" in last, last
    assert "Traceback" not in out.stderr
