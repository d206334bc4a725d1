"""Names never become paths unescaped, and outputs never overwrite inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from evaluator.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, limit: int = 80) -> str:
    """A file name made from any string (a model name such as '../../x' or '/tmp/x'): letters, digits, '.',
    '_' and '-' only, never hidden, never '.' or '..'; a short hash of the original is added whenever the
    name had to change, so different names stay different files."""
    cleaned = _UNSAFE.sub("_", name).strip("._-")[:limit] or "model"
    if cleaned != name:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def as_typed(value: str | os.PathLike) -> Path:
    """A path as a person types it: `~` expanded, anchored to the working folder once, where it is given, so
    later code never mixes a relative path with a resolved one (a suite's `--output nights` once died there).
    Symbolic links are kept as typed (not resolved)."""
    return Path(value).expanduser().absolute()


def beside(anchor: Path, value: str) -> Path:
    """A path written inside a file (a suite's `data`): `~` expanded, else relative to the file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (as_typed(anchor).parent / path).resolve()


def folder_names(names: list[str], limit: int = 80) -> dict[str, str]:
    """A folder name for each of `names`, made of `safe_name`'s characters: the name itself where it is safe,
    else cleaned (`meta-llama/Llama-3-8B` -> `meta-llama_Llama-3-8B`); `safe_name`'s hash suffix only where two
    names would clean to the same folder (letter case ignored, as some file systems do) or to nothing."""
    from collections import Counter

    cleaned = {n: _UNSAFE.sub("_", n).strip("._-")[:limit] for n in names}
    counts = Counter(c.lower() for c in cleaned.values())
    out = {n: c if c and counts[c.lower()] == 1 else safe_name(n, limit) for n, c in cleaned.items()}
    if len({f.lower() for f in out.values()}) < len(out):  # a suffixed name met a plain one: suffix them all
        out = {n: safe_name(n, limit) for n in names}
    return out


def check_output_file(path: Path, inputs: list[Path | None], flag: str) -> Path:
    """`path` as a file we may (re)write: not a folder, not one of the run's input files."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder: name a file to write", path=path, field=flag)
    target = path.resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise InputError(f"would overwrite the input {source}: name another file", path=path, field=flag)
    return path


def open_regular(path: Path, limit: int | None = None) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (a link is followed) of at most `limit` bytes;
    anything else is an OSError saying what it is. Never blocks: the file is opened without waiting and
    checked before a byte is read, so a FIFO (which blocks an ordinary open) or a device such as /dev/zero or
    /dev/urandom (endless) is refused, not read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a file")
            raise OSError(f"not a regular file: {kind}")
        if limit is not None and info.st_size > limit:
            raise OSError(f"{info.st_size:,} bytes, larger than the {limit:,} read here")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`open_regular`); one that grows past it while
    read is refused too."""
    with open_regular(path, limit) as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise OSError(f"larger than the {limit:,} bytes read here")
    return raw


MANIFEST = "manifest.json"  # what a writer put in a folder: each file's name and SHA-256
MANIFEST_FORMAT = "shopping-mmlu manifest"


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a regular file (not a link to one); None for anything else or what cannot be read."""
    if path.is_symlink():
        return None
    try:
        with open_regular(path) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _manifest(folder: Path, writer: str) -> dict[str, list[str]] | None:
    """The files `writer` recorded in `folder` (name -> the SHA-256s it may hold), or None where the folder
    has no manifest of that writer's. Only plain names count: the manifest is a file like any other."""
    try:
        doc = json.loads(read_regular(folder / MANIFEST, 16 * 2**20))
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or doc.get("writer") != writer
            or not isinstance(doc.get("files"), dict)):
        return None
    return {name: [h for h in digests if isinstance(h, str)] for name, digests in doc["files"].items()
            if isinstance(digests, list) and name != MANIFEST
            and all(_UNSAFE.sub("", part) == part and part not in ("", ".", "..") for part in name.split("/"))}


def record_folder(folder: Path, writer: str) -> None:
    """A manifest of every file under `folder` (names relative to it, `/` between folders), written last: for a
    writer that makes a whole folder before putting it in place (a results folder)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            files[path.relative_to(folder).as_posix()] = [file_sha256(path)]
    _write_manifest(folder, writer, files)


def _not_owned(folder: Path, owned: dict[str, str]) -> list[str]:
    """Everything under `folder` that is not one of the `owned` files (links and special files included), by
    its name relative to the folder; a folder holding only owned files is not listed."""
    out = []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in names + [d for d in dirs if (Path(root) / d).is_symlink()]:
            relative = (base / name).as_posix()
            if relative != MANIFEST and relative not in owned:
                out.append(relative)
    return sorted(out)


def owned_files(folder: Path, writer: str, legacy: set[str]) -> dict[str, str]:
    """The files in `folder` that `writer` wrote and nobody changed since (name -> SHA-256), by its manifest;
    in a folder written before manifests, the `legacy` names that are regular files."""
    recorded = _manifest(folder, writer)
    out = {}
    for name in (legacy if recorded is None else recorded):
        digest = file_sha256(folder / name)
        if digest is not None and (recorded is None or digest in recorded[name]):
            out[name] = digest
    return out


def _new_temporary(folder: Path, name: str) -> tuple[int, str]:
    """A new hidden file beside `name` in `folder`, ours alone (never one already there), with the user's
    umask (as an ordinary file: colleagues read what we write): its descriptor and path."""
    import secrets

    while True:
        path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), path
        except FileExistsError:
            continue


def _write_manifest(folder: Path, writer: str, files: dict[str, list[str]]) -> None:
    fd, tmp = _new_temporary(folder, MANIFEST)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"format": MANIFEST_FORMAT, "version": 1, "writer": writer, "files": files}, handle, indent=1)
        os.replace(tmp, folder / MANIFEST)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def replace_files(folder: Path, writer: str, makers: dict[str, Callable[[Path], bool]], names: set[str],
                  flag: str = "--output") -> list[Path]:
    """Write each of `makers`' files into `folder` (a maker writes the path it is given, or returns False for
    no file this time) and record them in the folder's manifest with their SHA-256. `names`: every name this
    writer can make (all a folder from before manifests can hold). Only files `writer` wrote and nobody
    changed since are replaced, or removed where this run has none of that name; a name held by anything else
    (a user's file, a folder) is refused before anything is written. Temporary files never outlive the call,
    however it ends."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(folder / MANIFEST) and _manifest(folder, writer) is None:
        raise InputError(f"holds a {MANIFEST} this tool did not write: name another folder", path=folder, field=flag)
    owned = owned_files(folder, writer, names)
    held = sorted(n for n in makers if os.path.lexists(folder / n) and n not in owned)
    if held:
        raise InputError(f"holds {', '.join(n[:60] for n in held[:5])}, not written by this tool or changed since: "
                         "move it or name another folder", path=folder, field=flag)
    made, temps = {}, []
    try:
        for name, make in makers.items():
            fd, tmp = _new_temporary(folder, name)
            os.close(fd)
            temps.append(tmp)
            if make(Path(tmp)):
                made[name] = (tmp, file_sha256(Path(tmp)))
        stale = {n for n in owned if n not in made and n in names}  # never a name this writer cannot make
        # first a manifest that knows the old content and the new, so that a stop while renaming leaves no file
        # of ours unknown; then the files; then the manifest of what is there
        _write_manifest(folder, writer, {**{n: [owned[n]] for n in stale},
                                         **{n: sorted({d, owned.get(n)} - {None}) for n, (_, d) in made.items()}})
        for name, (tmp, _) in made.items():
            os.replace(tmp, folder / name)
        for name in stale:
            (folder / name).unlink(missing_ok=True)
        _write_manifest(folder, writer, {n: [d] for n, (_, d) in made.items()})
    finally:
        for tmp in temps:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    return [folder / n for n in made]


OUR_FILES = {"results.json", "samples.jsonl", "official"}


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder(path: Path, inputs: list[Path | None], flag: str = "--output",
                        ours: set[str] = OUR_FILES, marker: str = "results.json",
                        format_name: str = "shopping-mmlu results", whole: bool = True) -> Path:
    """Where a results folder may be written: a new or empty folder, or one we wrote before; never an input
    or a folder holding one, never inside an input. A folder with our manifest (`replace_files`) may hold
    only what it records, unchanged; with `whole` False (a writer that replaces only its own files) other
    files may sit beside them, as long as none takes one of our names (`ours`). A folder from before
    manifests: our `marker` file in our format, and nothing but our names. A link is followed: the folder
    written is its target. Returns the resolved folder."""
    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise InputError("is a file: name a folder", path=path, field=flag)
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if _inside(target, source) or _inside(source, target):
            raise InputError(f"would write over or inside the input {source}: name another folder", path=path,
                             field=flag)
    if target.is_dir():
        present = {p.name for p in target.iterdir()}
        if present and _manifest(target, format_name) is not None:
            owned = owned_files(target, format_name, set())
            theirs = (_not_owned(target, owned) if whole
                      else sorted(n for n in present - {MANIFEST} - set(owned) if n in ours))
            if theirs:
                raise InputError(f"holds {', '.join(n[:60] for n in theirs[:5])}{' ...' if len(theirs) > 5 else ''}"
                                 ", not written by this tool or changed since: move it or name another folder",
                                 path=path, field=flag)
        elif present:
            try:
                doc = json.loads(read_regular(target / marker, 64 * 2**20))
                written_by_us = isinstance(doc, dict) and doc.get("format") == format_name
            except (OSError, ValueError):
                written_by_us = False
            if not written_by_us or not present <= ours:
                raise InputError("holds files this tool did not write: name a new or empty folder (a results "
                                 "folder is replaced as a whole)", path=path, field=flag)
    return target


SUITE_FILES = {"suite.log", "models", "leaderboard.md", "leaderboard.csv", "leaderboard.json", "summary.json",
               "report.html"}
NIGHT = re.compile(r"\d{8}-\d{6}(-\d{1,3})?")  # a night's folder: its local start time, made unique
LATEST_LINK, LATEST_FILE = "latest", "LATEST"  # the newest night: a symlink, or a text file where links fail


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def _a_night(folder: Path) -> bool:
    """A night a suite wrote: a real folder, empty (made, then stopped) or its log and only a suite's files."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    present = _visible(folder)
    return not present or ("suite.log" in present and present <= SUITE_FILES)


def _suite_written(folder: Path) -> bool:
    """Only what suites write: nights, the `latest` link or file naming one, and an older version's night
    written flat into the folder itself (its `suite.log` and a suite's files)."""
    present = _visible(folder)
    nights = {n for n in present if NIGHT.fullmatch(n) and _a_night(folder / n)}
    flat = present - nights - {LATEST_LINK, LATEST_FILE}
    if LATEST_LINK in present:
        link = folder / LATEST_LINK
        target = os.readlink(link) if link.is_symlink() else ""
        if not NIGHT.fullmatch(target) or (target not in nights and os.path.lexists(folder / target)):
            return False  # ours names a night here (one since deleted by hand is fine)
    if LATEST_FILE in present:
        marker = folder / LATEST_FILE
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 256:
            return False
    if flat and ("suite.log" not in flat or not flat <= SUITE_FILES):
        return False
    return bool(nights) or "suite.log" in flat


def check_suite_folder(path: Path, inputs: list[Path | None]) -> Path:
    """A suite's folder: new, empty, or one suites wrote (`_suite_written`): each run adds a night to it;
    never an input, a folder holding one, or inside one."""
    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise InputError("is a file: name a folder", path=path, field="--output")
    for source in inputs:
        if source is not None and (_inside(target, Path(source).resolve()) or _inside(Path(source).resolve(), target)):
            raise InputError(f"would write over or inside the input {Path(source).resolve()}: name another folder",
                             path=path, field="--output")
    if target.is_dir() and _visible(target) and not _suite_written(target):
        raise InputError("holds files no suite wrote: name a new or empty folder", path=path, field="--output")
    return target


def new_night(folder: Path) -> Path:
    """A new night's folder inside a suite folder (checked by `check_suite_folder`), named by the local time
    it starts, with `latest` pointing at it. An older version's night, written flat into the folder, is
    first moved into a night folder of its own (named by its summary's or its log's time)."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "suite.log").is_file():
        _make_night(folder, time.localtime(_flat_night_time(folder)), [n for n in SUITE_FILES
                                                                       if (folder / n).exists()])
    night = _make_night(folder, time.localtime(), [])
    try:
        scratch = folder / f".{LATEST_LINK}-{os.getpid()}"
        scratch.unlink(missing_ok=True)
        os.symlink(night.name, scratch)
        os.replace(scratch, folder / LATEST_LINK)
        linked = True
    except OSError:  # a file system without links: the text file says it
        linked = False
    if not linked or (folder / LATEST_FILE).is_file():  # never leave the two disagreeing
        scratch = folder / f".{LATEST_FILE}-{os.getpid()}"
        scratch.write_text(night.name + "\n", encoding="utf-8")
        os.replace(scratch, folder / LATEST_FILE)
    return night


def _make_night(folder: Path, when, move: list[str]) -> Path:
    """A new night folder named by `when` (a suffix where that name is taken), holding `move` (names in
    `folder`, moved in)."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", when)
    for n in range(1, 1000):
        night = folder / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            night.mkdir()
        except FileExistsError:
            continue
        for name in move:
            os.rename(folder / name, night / name)
        return night
    raise InputError("a thousand nights started in the same second here: try again", path=folder,
                     field="--output")


def _flat_night_time(folder: Path) -> float:
    """When an older version's flat night started: its summary's `started_at`, else its log's time."""
    import datetime
    import json

    try:
        started = json.loads(read_regular(folder / "summary.json", 1 << 20))["started_at"]
        when = datetime.datetime.fromisoformat(started).timestamp()
        if 0 < when < 2**33:  # a garbled year cannot name a folder
            return when
    except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
        pass
    return (folder / "suite.log").stat().st_mtime


def night_of(path: Path) -> Path:
    """The night a reader means: a suite folder's newest (`latest`, else `LATEST`), or the folder itself (a
    night, an older version's flat suite folder, a results folder). Only a night inside the folder is
    followed, whatever the link or file says."""
    path = Path(path)
    names = []
    link = path / LATEST_LINK
    if link.is_symlink():
        try:
            names.append(os.readlink(link))
        except OSError:
            pass
    marker = path / LATEST_FILE
    if marker.is_file() and not marker.is_symlink():
        try:
            names.append(read_regular(marker, 256).decode("utf-8", "replace").strip())
        except OSError:
            pass
    for name in names:
        if NIGHT.fullmatch(name) and (path / name).is_dir() and not (path / name).is_symlink():
            return path / name
    return path
