"""Fetch the official data.zip, check its SHA-256, and unpack it atomically.

The archive is streamed to a temporary file beside the destination while it is hashed, unpacked into a
temporary folder, and only then renamed into place: a failure at any step leaves no half-unpacked folder.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from evaluator.errors import InputError
from evaluator.data.records import TYPE_FOLDERS

OFFICIAL_DATA_URL = "https://raw.githubusercontent.com/KL4805/ShoppingMMLU/main/data.zip"
# The official archive's SHA-256. Not pinned yet: no machine of ours has reached GitHub to read it. Until it
# is, `data download` prints the hash it computed so a user can pin it with --sha256.
OFFICIAL_DATA_SHA256: str | None = None
CHUNK = 1 << 20


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _fetch(source: str, target: Path, progress: Progress) -> str:
    """Copy `source` (URL or local file) into `target`; return its SHA-256."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        if _is_url(source):
            try:
                with httpx.stream("GET", source, follow_redirects=True, timeout=60) as response:
                    if response.status_code != 200:
                        raise InputError(f"download failed: HTTP {response.status_code}", path=source)
                    size = response.headers.get("content-length")
                    task = progress.add_task("data.zip", total=int(size) if size and size.isdigit() else None)
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.advance(task, len(chunk))
            except httpx.HTTPError as exc:
                raise InputError(f"download failed: {exc}", path=source) from None
        else:
            path = Path(source.removeprefix("file://"))
            if not path.is_file():
                raise InputError("no such file", path=path)
            task = progress.add_task(path.name, total=path.stat().st_size)
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
    return digest.hexdigest()


def _unpack(archive: Path, into: Path, source: str) -> Path:
    """Unpack safely (no absolute or `..` members); return the folder that holds the type folders."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts:
                    raise InputError(f"unsafe path in archive: {name!r}", path=source)
            bad = bundle.testzip()
            if bad is not None:
                raise InputError(f"corrupt archive member {bad!r}", path=source)
            bundle.extractall(into)
    except zipfile.BadZipFile as exc:
        raise InputError(f"not a zip archive ({exc})", path=source) from None
    root = into
    expected = {*TYPE_FOLDERS, "skills"}
    while not any((root / name).is_dir() for name in expected):
        children = [p for p in root.iterdir() if p.is_dir() and p.name != "__MACOSX"]
        if len(children) != 1:
            raise InputError("the archive does not have the Shopping MMLU layout (skills/, multiple_choice/, "
                             "retrieval/, ranking/, named_entity_recognition/, generation/)", path=source)
        root = children[0]
    return root


def download(dest: Path, source: str = OFFICIAL_DATA_URL, sha256: str | None = OFFICIAL_DATA_SHA256,
             force: bool = False, console: Console | None = None) -> Path:
    """Fetch, verify and unpack data.zip into `dest`; returns `dest`."""
    console = console or Console(stderr=True)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise InputError("destination exists and is not empty; pass --force to replace it", path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.partial-", dir=dest.parent) as scratch:
        scratch_path = Path(scratch)
        archive = scratch_path / "data.zip"
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            digest = _fetch(source, archive, progress)
        if sha256 is not None and digest.lower() != sha256.lower():
            raise InputError(f"SHA-256 mismatch: expected {sha256.lower()}, got {digest} (nothing was unpacked)",
                             path=source)
        if sha256 is None:
            console.print(f"[yellow]no SHA-256 to check against[/]; this archive's is {digest} "
                          "(pass --sha256 to pin it)")
        unpacked = _unpack(archive, scratch_path / "unpacked", source)
        if dest.exists():
            old = scratch_path / "previous"
            dest.rename(old)  # removed with the scratch folder, after the new data is in place
        shutil.move(str(unpacked), str(dest))
    console.print(f"Shopping MMLU data in {dest} (sha256 {digest})")
    return dest
