"""Fetch the official data.zip, check its SHA-256, and unpack it atomically and safely.

The archive is streamed to a temporary folder beside the destination while it is hashed, unpacked there
member by member (no absolute or `..` paths, no links, no encryption, no compression we cannot read, a cap
on the bytes written whatever the headers claim), and only then renamed into place: a failure at any step
leaves no half-unpacked folder, and a folder left by a killed download is removed by the next one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from evaluator.data.records import TYPE_FOLDERS
from evaluator.errors import InputError
from evaluator.redact import strip_url_credentials

OFFICIAL_DATA_URL = "https://raw.githubusercontent.com/KL4805/ShoppingMMLU/main/data.zip"
# The official archive's SHA-256. Not pinned yet: no machine of ours has reached GitHub to read it. Until it
# is, `data download` prints the hash it computed so a user can pin it with --sha256.
OFFICIAL_DATA_SHA256: str | None = None
CHUNK = 1 << 20
MAX_ARCHIVE_BYTES = 2 * 2**30  # the official archive is tens of MB
MAX_UNPACKED_BYTES = 4 * 2**30
MAX_MEMBERS = 100_000
MAX_RATIO = 200  # a member that unpacks to more than 200x its compressed size is a bomb, not data
PARTIAL = ".partial-"


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _fetch(source: str, target: Path, progress: Progress) -> str:
    """Copy `source` (URL or local file) into `target`; return its SHA-256."""
    import httpx

    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        if _is_url(source):
            url, user, password = strip_url_credentials(source)
            auth = (user or "", password or "") if user or password else None
            shown = url
            try:
                with httpx.stream("GET", url, follow_redirects=True, timeout=60, auth=auth) as response:
                    if response.status_code != 200:
                        raise InputError(f"download failed: HTTP {response.status_code}", path=shown)
                    declared = response.headers.get("content-length")
                    total = int(declared) if declared and declared.isdigit() else None
                    if total is not None and total > MAX_ARCHIVE_BYTES:
                        raise InputError(f"the archive is {total:,} bytes, over the {MAX_ARCHIVE_BYTES:,}-byte cap",
                                         path=shown)
                    task = progress.add_task("data.zip", total=total)
                    for chunk in response.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > MAX_ARCHIVE_BYTES:
                            raise InputError(f"the archive passed the {MAX_ARCHIVE_BYTES:,}-byte cap", path=shown)
                        out.write(chunk)
                        digest.update(chunk)
                        progress.advance(task, len(chunk))
            except httpx.HTTPError as exc:
                raise InputError(f"download failed: {type(exc).__name__}: {str(exc)[:200]}", path=shown) from None
        else:
            path = Path(source.removeprefix("file://")).expanduser()  # `--from=~/data.zip`: no shell expands it
            if not path.is_file():
                raise InputError("no such file", path=path)
            task = progress.add_task(path.name, total=path.stat().st_size)
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
    return digest.hexdigest()


def _members(bundle: zipfile.ZipFile, source: str) -> list[zipfile.ZipInfo]:
    """The archive's members, each one checked before anything is written."""
    infos = bundle.infolist()
    if not infos:
        raise InputError("the archive is empty", path=source)
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"the archive has {len(infos):,} members, more than data.zip ever could", path=source)
    seen: dict[str, bool] = {}
    declared = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(f"unsafe path in archive: {name[:200]!r}", path=source)
        if info.flag_bits & 0x1:
            raise InputError(f"member {name[:200]!r} is encrypted", path=source)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                      zipfile.ZIP_LZMA):
            raise InputError(f"member {name[:200]!r} uses a compression this tool cannot read (method "
                             f"{info.compress_type})", path=source)
        mode = (info.external_attr >> 16) & 0o170000
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InputError(f"member {name[:200]!r} is a link or a device, not a file", path=source)
        is_dir = info.is_dir()
        key = "/".join(parts)
        if key in seen:
            raise InputError(f"the archive names {name[:200]!r} twice", path=source)
        seen[key] = is_dir
        declared += info.file_size
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > CHUNK:
            raise InputError(f"member {name[:200]!r} expands {info.file_size / info.compress_size:,.0f}-fold: "
                             "a zip bomb, not data", path=source)
    for key, is_dir in seen.items():  # a file that is also another member's folder
        parts = key.split("/")
        for i in range(1, len(parts)):
            if seen.get("/".join(parts[:i])) is False:
                raise InputError(f"the archive has both a file and a folder named {'/'.join(parts[:i])!r}",
                                 path=source)
    if declared > MAX_UNPACKED_BYTES:
        raise InputError(f"the archive would unpack to {declared:,} bytes, over the {MAX_UNPACKED_BYTES:,}-byte cap",
                         path=source)
    return infos


def _unpack(archive: Path, into: Path, source: str) -> Path:
    """Unpack member by member, counting the bytes really written; return the folder holding the data."""
    written = 0
    try:
        with zipfile.ZipFile(archive) as bundle:
            infos = _members(bundle, source)
            for info in infos:
                target = into.joinpath(*PurePosixPath(info.filename).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as member, target.open("wb") as out:
                    while chunk := member.read(CHUNK):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:
                            raise InputError(f"unpacking passed the {MAX_UNPACKED_BYTES:,}-byte cap", path=source)
                        out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise InputError(f"not a zip archive, or a corrupt one ({exc})", path=source) from None
    except (NotImplementedError, RuntimeError, EOFError, ValueError, zipfile.LargeZipFile) as exc:
        raise InputError(f"cannot unpack the archive ({type(exc).__name__}: {str(exc)[:200]})", path=source) from None
    root = into
    expected = {*TYPE_FOLDERS, "skills"}
    while not any((root / name).is_dir() for name in expected):
        children = [p for p in root.iterdir() if p.is_dir() and p.name != "__MACOSX"]
        if len(children) != 1:
            raise InputError("the archive does not have the Shopping MMLU layout (skills/, multiple_choice/, "
                             "retrieval/, ranking/, named_entity_recognition/, generation/)", path=source)
        root = children[0]
    return root


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Folders a killed download left behind (their process is gone)."""
    for folder in parent.glob(f".{name}{PARTIAL}*"):
        pid = folder.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise InputError("the destination is a file: name a folder", path=dest, field="--dest")
    resolved = dest.resolve()
    protected = {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}
    protected |= set(Path.cwd().resolve().parents)
    if resolved in protected:
        raise InputError("refusing to replace the current folder, one above it, the home folder or the root; "
                         "name a folder of its own", path=dest, field="--dest")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise InputError("destination exists and is not empty; pass --force to replace it", path=dest)


def download(dest: Path, source: str = OFFICIAL_DATA_URL, sha256: str | None = OFFICIAL_DATA_SHA256,
             force: bool = False, console: Console | None = None) -> Path:
    """Fetch, verify and unpack data.zip into `dest`; returns `dest`."""
    console = console or Console(stderr=True)
    dest = Path(dest)
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise InputError("--sha256 takes 64 hexadecimal digits", field="--sha256")
    _check_destination(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(dest.parent, dest.name)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}{PARTIAL}{os.getpid()}-", dir=dest.parent) as scratch:
        scratch_path = Path(scratch)
        archive = scratch_path / "data.zip"
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            digest = _fetch(source, archive, progress)
        shown = strip_url_credentials(source)[0]
        if sha256 is not None and digest.lower() != sha256.lower():
            raise InputError(f"SHA-256 mismatch: expected {sha256.lower()}, got {digest} (nothing was unpacked)",
                             path=shown)
        if sha256 is None:
            console.print(f"[yellow]no SHA-256 to check against[/]; this archive's is {digest} "
                          "(pass --sha256 to pin it)")
        unpacked = _unpack(archive, scratch_path / "unpacked", shown)
        old = scratch_path / "previous"
        if dest.exists():
            dest.rename(old)  # removed with the scratch folder, after the new data is in place
        try:
            shutil.move(str(unpacked), str(dest))
        except OSError:
            if old.exists() and not dest.exists():
                old.rename(dest)  # put the previous data back
            raise
    console.print(f"Shopping MMLU data in {dest} (sha256 {digest})")
    return dest
