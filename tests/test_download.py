"""`data download` against a loopback HTTP server and local files, with zips the tests build."""

from __future__ import annotations

import functools
import os
import subprocess
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from builders import run_cli, write_official_layout
from evaluator.data import loaders


def build_zip(tmp_path: Path, name: str = "data.zip", prefix: str = "") -> Path:
    layout = write_official_layout(tmp_path / "layout")
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(layout.rglob("*")):
            if file.is_file():
                bundle.write(file, prefix + str(file.relative_to(layout)))
    return archive


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()




def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_download_over_http_checks_sha_and_unpacks(tmp_path, server, capsys, monkeypatch):
    base, www = server
    archive = build_zip(www.parent, "data.zip")
    archive.rename(www / "data.zip")
    dest = tmp_path / "out" / "data"
    code, _, err = run_cli(["data", "download", "--from", f"{base}/data.zip", "--dest", dest,
                            "--sha256", sha(www / "data.zip")], capsys, monkeypatch)
    assert code == 0, err
    assert len(loaders.load(dest, "task").questions) == 8
    assert len(loaders.load(dest, "skill").questions) == 3
    assert leftovers(dest.parent) == []


def test_nested_top_folder_is_found(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path, prefix="data/")
    dest = tmp_path / "d"
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest, "--sha256", sha(archive)],
                           capsys, monkeypatch)
    assert code == 0, err
    assert (dest / "skills" / "skill1_concept.json").is_file()


def test_sha_mismatch_leaves_nothing(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path)
    dest = tmp_path / "d"
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest, "--sha256", "0" * 64],
                           capsys, monkeypatch)
    assert code == 2 and "SHA-256 mismatch" in err and "Traceback" not in err
    assert not dest.exists() and leftovers(tmp_path) == []


def test_without_a_pinned_hash_it_prints_the_one_it_computed(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path)
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", tmp_path / "d"], capsys, monkeypatch)
    assert code == 0 and sha(archive) in err.replace("\n", "")


def test_http_error_and_truncated_zip(tmp_path, server, capsys, monkeypatch):
    base, www = server
    dest = tmp_path / "d"
    code, _, err = run_cli(["data", "download", "--from", f"{base}/missing.zip", "--dest", dest],
                           capsys, monkeypatch)
    assert code == 2 and "HTTP 404" in err and not dest.exists()
    archive = build_zip(tmp_path)
    (www / "cut.zip").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    code, _, err = run_cli(["data", "download", "--from", f"{base}/cut.zip", "--dest", dest], capsys, monkeypatch)
    assert code == 2 and "not a zip archive" in err
    assert not dest.exists() and leftovers(tmp_path) == []


def test_unreachable_server(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["data", "download", "--from", "http://127.0.0.1:9/data.zip", "--dest", tmp_path / "d"],
                           capsys, monkeypatch)
    assert code == 2 and "download failed" in err


def test_unsafe_member_is_refused(tmp_path, capsys, monkeypatch):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("skills/s.json", "{}\n")
        bundle.writestr("../escape.txt", "x")
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", tmp_path / "d"], capsys, monkeypatch)
    assert code == 2 and "unsafe path" in err
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "d").exists()


def test_wrong_layout_is_refused(tmp_path, capsys, monkeypatch):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a/readme.txt", "x")
        bundle.writestr("b/readme.txt", "x")
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", tmp_path / "d"], capsys, monkeypatch)
    assert code == 2 and "layout" in err


def test_existing_destination_needs_force(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path)
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest], capsys, monkeypatch)
    assert code == 2 and "--force" in err and (dest / "keep.txt").exists()
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest, "--force"], capsys, monkeypatch)
    assert code == 0 and not (dest / "keep.txt").exists() and (dest / "skills").is_dir()
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- hostile archives and destinations

def _with_method(archive: Path, method: int) -> None:
    """Rewrite every member's compression method in place (both headers), as a deflate64 zip would say."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            data[start + offset:start + offset + 2] = method.to_bytes(2, "little")
            start += 4
    archive.write_bytes(bytes(data))


def _zip(tmp_path: Path, name: str, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", compression) as bundle:
        for member, content in members.items():
            bundle.writestr(member, content)
    return archive


@pytest.mark.parametrize("case, expected", [
    ("bomb", "zip bomb"), ("encrypted", "encrypted"), ("deflate64", "compression"), ("empty", "empty"),
    ("twice", "twice"), ("file-and-folder", "both a file and a folder"), ("symlink", "link"),
])
def test_hostile_archives_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch, case, expected):
    if case == "bomb":  # 200 MB of zeros compress to ~200 KB
        archive = tmp_path / "bomb.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            with bundle.open("skills/s.json", "w") as member:
                for _ in range(200):
                    member.write(b"\0" * 2**20)
    elif case == "encrypted":
        archive = _zip(tmp_path, "e.zip", {"skills/s.json": b"{}\n"})
        data = bytearray(archive.read_bytes())
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(signature)
            data[at + offset] |= 0x1  # the "encrypted" flag bit
        archive.write_bytes(bytes(data))
    elif case == "deflate64":
        archive = _zip(tmp_path, "d64.zip", {"skills/s.json": b"{}\n"}, zipfile.ZIP_STORED)
        _with_method(archive, 9)
    elif case == "empty":
        archive = _zip(tmp_path, "empty.zip", {})
    elif case == "twice":
        archive = tmp_path / "twice.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("skills/s.json", "{}\n")
            with pytest.warns(UserWarning):
                bundle.writestr("skills/s.json", "{}\n")
    elif case == "file-and-folder":
        archive = _zip(tmp_path, "ff.zip", {"skills": b"x", "skills/s.json": b"{}\n"})
    else:
        archive = tmp_path / "link.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            info = zipfile.ZipInfo("skills/s.json")
            info.external_attr = (0o120777 << 16)  # a symbolic link
            bundle.writestr(info, "/etc/passwd")
    dest = tmp_path / "out" / "d"
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest], capsys, monkeypatch)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not dest.exists() and leftovers(dest.parent) == []


def test_destinations_that_make_no_sense_are_refused(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path)
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep")
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", a_file], capsys, monkeypatch)
    assert code == 2 and "is a file" in err and a_file.read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    for dest in (".", "..", str(Path.home())):
        code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest, "--force"], capsys,
                               monkeypatch)
        assert code == 2 and "refusing" in err, dest
    assert a_file.exists() and archive.exists()
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", "d", "--sha256", "xyz"], capsys,
                           monkeypatch)
    assert code == 2 and "64 hexadecimal" in err


def test_a_killed_download_leaves_a_folder_the_next_one_removes(tmp_path, capsys, monkeypatch):
    archive = build_zip(tmp_path)
    dest = tmp_path / "out" / "d"
    dest.parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = dest.parent / f".d.partial-{dead.pid}-abc"
    stale.mkdir()
    (stale / "data.zip").write_bytes(b"half")
    live = dest.parent / f".d.partial-{os.getpid()}-xyz"  # a download still running: left alone
    live.mkdir()
    code, _, err = run_cli(["data", "download", "--from", archive, "--dest", dest], capsys, monkeypatch)
    assert code == 0, err
    assert not stale.exists() and live.exists()
