"""Getting the official files onto disk and checking them: `download` (fetch, verify the published MD5,
unpack safely) and `check` (per file: present, missing or corrupt)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from tqdm import tqdm

from locallearn.data.errors import CorruptFileError, DatasetError, one_line
from locallearn.data.sources import BUNDLED, Archive, download_hint, get_source, read_file

_CHUNK = 1 << 20
_TIMEOUT_S = 60

_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python without PEP 706 has no filters

Status = Literal["present", "missing", "corrupt"]


@dataclass(frozen=True)
class FileStatus:
    path: str  # relative to the root
    status: Status
    detail: str = ""  # image count when present, the reason when corrupt


@dataclass
class CheckReport:
    """What `check` found; ``str()`` is the human-readable report, ``ok`` says whether training can use it."""

    name: str
    root: Path
    files: list[FileStatus] = field(default_factory=list)
    bundled: bool = False  # ships with a dependency: nothing on disk to check

    @property
    def ok(self) -> bool:
        return all(f.status == "present" for f in self.files)

    def __str__(self) -> str:
        if self.bundled:
            return f"{self.name}: bundled with scikit-learn; nothing to download or check"
        verdict = "ok" if self.ok else f"not usable; {download_hint(self.name, self.root)}"
        lines = [f"{self.name} in {self.root}: {verdict}"]
        lines += [f"  {f.status:<8} {f.path}" + (f"  ({f.detail})" if f.detail else "") for f in self.files]
        return "\n".join(lines)


def check(name: str, root: Path | str, *, strict: bool = True) -> CheckReport:
    """Read and validate every file of dataset ``name`` under ``root`` (``strict``: official counts too)."""
    root = Path(root)
    if name in BUNDLED:
        return CheckReport(name, root, bundled=True)
    source = get_source(name)
    report = CheckReport(name, root)
    for file in source.files:
        if not (root / file.path).is_file():
            report.files.append(FileStatus(file.path, "missing"))
            continue
        try:
            part = read_file(source, file, root, strict=strict)
        except CorruptFileError as err:
            report.files.append(FileStatus(file.path, "corrupt", err.reason))
        else:
            report.files.append(FileStatus(file.path, "present", f"{len(part)} {part.kind}"))
    return report


def download(name: str, root: Path | str, *, progress: bool = True) -> CheckReport:
    """Fetch, verify and unpack dataset ``name`` into ``root``; a no-op when `check` already passes.

    Raises `DatasetError` (one line) on a network failure, a checksum mismatch or an unsafe archive.
    """
    root = Path(root)
    report = check(name, root)
    if report.ok:
        return report
    source = get_source(name)
    root.mkdir(parents=True, exist_ok=True)
    for archive in source.archives:
        path = root / archive.filename
        if not (path.is_file() and md5sum(path) == archive.md5):
            fetch(archive, root, progress=progress)
        if archive.extract:
            safe_extract(path, root, members=archive.members)
            path.unlink()  # the unpacked files are what `check` verifies; the tarball is only disk space
    report = check(name, root)
    if not report.ok:
        bad = "; ".join(f"{f.path} {f.status}" for f in report.files if f.status != "present")
        raise DatasetError(f"{name}: downloaded archives verified but files are unusable: {bad}.")
    return report


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(archive: Archive, root: Path, *, progress: bool = True) -> Path:
    """Download ``archive`` to ``root/archive.filename``: into a temporary file first, MD5 checked while it
    streams, renamed into place only when the checksum matches, so an interrupted or corrupted download
    never leaves a file that looks complete."""
    target = root / archive.filename
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{archive.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(archive.url, headers={"User-Agent": "locallearn"})
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=archive.filename,
                          disable=not progress, leave=False) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        if digest.hexdigest() != archive.md5:
            raise DatasetError(
                f"{archive.url}: MD5 {digest.hexdigest()} does not match the published {archive.md5}; "
                "the download is corrupt or the file changed upstream; try again."
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise DatasetError(
            f"could not download {archive.url} ({one_line(reason)}); check the network, or fetch it by hand "
            f"into {root}/ and run the command again."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def safe_extract(archive: Path, dest: Path, *, members: Iterable[str] | None = None) -> list[Path]:
    """Unpack a tarball into ``dest``, refusing the whole archive if any member could write outside it:
    absolute names, ``..`` components, links pointing outside, paths through a link, device files.
    Python's own ``filter="data"`` runs as a second line of defence where available."""
    dest = Path(dest).resolve()
    wanted = None if members is None else {_normal(m) for m in members}
    try:
        with tarfile.open(archive, "r:*") as tar:
            chosen = []
            links: set[str] = set()
            for member in tar.getmembers():
                _check_member(member, dest, links, archive)
                if wanted is None or _normal(member.name) in wanted:
                    chosen.append(member)
            absent = (wanted or set()) - {_normal(m.name) for m in chosen}
            if absent:
                missing = ", ".join(sorted(absent))
                raise DatasetError(f"{archive}: expected members missing from the archive: {missing}.")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=chosen, filter="data")
            else:  # Python without PEP 706: our own checks above are the filter
                tar.extractall(dest, members=chosen)
    except _FILTER_ERROR as err:  # our checks should have caught it first; refuse all the same
        raise DatasetError(f"{archive}: refusing to extract: {one_line(err)}.") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(
            f"{archive} is not a readable tar archive ({one_line(err)}); delete it and download again."
        ) from None
    return [dest / m.name for m in chosen if m.isfile()]


def _check_member(member: tarfile.TarInfo, dest: Path, links: set[str], archive: Path) -> None:
    def refuse(why: str) -> DatasetError:
        return DatasetError(f"{archive}: refusing to extract member {member.name!r}: {why}.")

    name = PurePosixPath(member.name)
    drive = len(member.name) > 1 and member.name[1] == ":"  # C:/... (Windows)
    if member.name.startswith(("/", "\\")) or name.is_absolute() or drive:
        raise refuse("absolute path")
    if ".." in name.parts or "\\" in member.name:
        raise refuse("path escapes the destination")
    if not _inside(dest / name, dest):
        raise refuse("path escapes the destination")
    if any(str(PurePosixPath(*name.parts[:i])) in links for i in range(1, len(name.parts))):
        raise refuse("path goes through a link")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # A symlink is relative to its own directory, a hard link to the archive root.
        resolved = dest / (name.parent / target if member.issym() else target)
        if target.is_absolute() or not _inside(resolved, dest):
            raise refuse(f"link to {member.linkname!r} points outside the destination")
        links.add(str(name))
    elif not (member.isfile() or member.isdir()):
        raise refuse("not a regular file or directory")


def _normal(name: str) -> str:
    return str(PurePosixPath(name))  # "./a//b" → "a/b": archives differ in how they spell member names


def _inside(path: Path, root: Path) -> bool:
    # normpath, not resolve(): the member does not exist yet, and ".." must be folded lexically.
    return Path(os.path.normpath(path)).is_relative_to(root)
