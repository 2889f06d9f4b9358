"""Getting the official files onto disk and checking them: `download` (fetch, verify the published MD5,
unpack safely) and `check` (per file: present, missing or corrupt).

An archive's MD5 is of the file itself or of its gzip-decompressed data (`Archive.md5_of`); `Digest`
computes either from the same stream of chunks, for a download as it arrives and for a file on disk."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from tqdm import tqdm

from locallearn.data.errors import CorruptFileError, DatasetError, one_line
from locallearn.data.sources import BUNDLED, Archive, DataFile, Source, download_hint, get_source, locate, read_file

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
        # files found outside the root (Debian's folder) are shown with their absolute paths
        elsewhere = ", ".join(sorted({Path(f.path).parent.as_posix() for f in self.files if Path(f.path).is_absolute()}))
        where = self.root
        if elsewhere:
            in_root = any(not Path(f.path).is_absolute() for f in self.files)
            where = f"{self.root} and {elsewhere}" if in_root else f"{elsewhere} (not in {self.root})"
        lines = [f"{self.name} in {where}: {verdict}"]
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
        path = locate(source, file, root)
        if path is None:
            report.files.append(FileStatus(file.path, "missing"))
            continue
        # Relative to the root when found there, else where it was found (e.g. Debian's folder).
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        try:
            part = read_file(source, file, root, strict=strict)
        except CorruptFileError as err:
            report.files.append(FileStatus(shown, "corrupt", err.reason))
            continue
        changed = _not_official(source, file, path) if strict else ""
        if changed:
            report.files.append(FileStatus(shown, "corrupt", changed))
        else:
            report.files.append(FileStatus(shown, "present", f"{len(part)} {part.kind}"))
    return report


def _not_official(source: Source, file: DataFile, path: Path) -> str:
    """Why ``path`` is not the published file, for a data file that is itself a published archive (used as
    downloaded, ``extract=False``: Fashion-MNIST's IDX files, SVHN's .mat), by its MD5; "" when it matches or
    when the file was unpacked from an archive (no MD5 of its own is published). A file kept uncompressed
    under its other name has the MD5 of the decompressed data."""
    archive = next((a for a in source.archives if not a.extract and a.filename == file.path), None)
    if archive is None:
        return ""
    of = archive.md5_of if path.name == archive.filename else "file"
    digest = _digest_file(path, of)
    if digest.hexdigest() == archive.md5 and not digest.problem:
        return ""
    return f"{digest.mismatch(archive)}: a byte differs from the official file; replace it"


def download(name: str, root: Path | str, *, progress: bool = True) -> CheckReport:
    """Fetch, verify and unpack dataset ``name`` into ``root``; a no-op when `check` already passes.

    Raises `DatasetError` (one line) on a network failure, a checksum mismatch or an unsafe archive. An
    archive already in ``root`` is used only if its checksum matches; otherwise it is reported, not replaced
    (it may be the user's own copy).
    """
    root = Path(root)
    report = check(name, root)
    if report.ok:
        return report
    source = get_source(name)
    root.mkdir(parents=True, exist_ok=True)
    for archive in source.archives:
        path = root / archive.filename
        if path.is_file():
            verify(archive, path)
        else:
            fetch(archive, root, progress=progress)
        if archive.extract:
            safe_extract(path, root, members=archive.members)
            path.unlink()  # the unpacked files are what `check` verifies; the tarball is only disk space
    report = check(name, root)
    if not report.ok:
        bad = "; ".join(f"{f.path} {f.status}" for f in report.files if f.status != "present")
        raise DatasetError(f"{name}: downloaded archives verified but files are unusable: {bad}.")
    return report


class Digest:
    """The MD5 of a byte stream fed in chunks: of the bytes themselves (``of="file"``), or of the data
    inside their gzip wrapper (``of="gunzipped"``), decompressed piece by piece so that memory stays at a
    chunk whatever the ratio. A stream that is not valid gzip gets a ``problem`` instead of a usable MD5."""

    def __init__(self, of: str = "file") -> None:
        if of not in ("file", "gunzipped"):
            raise ValueError(f"unknown checksum target {of!r}; valid: file, gunzipped.")
        self.of = of
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._gunzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if of == "gunzipped" else None
        self._error = ""  # why the gzip stream could not be decompressed, once it could not

    def update(self, chunk: bytes) -> None:
        if self._gunzip is None:
            self._md5.update(chunk)
            return
        if self._error:
            return
        try:
            data = chunk
            while True:  # at most _CHUNK bytes of output per call
                out = self._gunzip.decompress(data, _CHUNK)
                self._md5.update(out)
                data = self._gunzip.unconsumed_tail
                if not data and len(out) < _CHUNK:
                    break
        except zlib.error as err:
            self._error = f"not a valid gzip stream: {one_line(err)}"
            return
        if self._gunzip.unused_data:
            self._error = "data after the end of the gzip stream"

    @property
    def problem(self) -> str:
        """Why the data fed so far are not one complete gzip stream ("" when they are, or for of="file")."""
        if self._gunzip is not None and not self._error and not self._gunzip.eof:
            return "the gzip stream is cut short"
        return self._error

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def matches(self, archive: Archive) -> bool:
        return self.hexdigest() == archive.md5 and not self.problem

    def mismatch(self, archive: Archive) -> str:
        """``MD5 <found> does not match the published <md5>``, naming what was hashed and any gzip problem."""
        what = "MD5" if self.of == "file" else "MD5 of the decompressed data"
        problem = f" ({self.problem})" if self.problem else ""
        return f"{what} {self.hexdigest()}{problem} does not match the published {archive.md5}"


def md5sum(path: Path, *, of: str = "file") -> str:
    """The MD5 of the file at ``path`` (``of="file"``) or of its gzip-decompressed data (``"gunzipped"``)."""
    return _digest_file(path, of).hexdigest()


def _digest_file(path: Path, of: str) -> Digest:
    digest = Digest(of)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest


def verify(archive: Archive, path: Path) -> None:
    """Raise a one-line `DatasetError` naming ``path`` unless it has ``archive``'s checksum."""
    digest = _digest_file(path, archive.md5_of)
    if not digest.matches(archive):
        raise DatasetError(
            f"{path}: {digest.mismatch(archive)}; it is not the official {archive.filename} or it is corrupt: "
            "delete it and run the command again."
        )


def fetch(archive: Archive, root: Path, *, progress: bool = True) -> Path:
    """Download ``archive`` to ``root/archive.filename``: into a temporary file first, checksum computed while
    it streams, renamed into place only when it matches, so an interrupted or corrupted download never leaves
    a file that looks complete."""
    target = root / archive.filename
    digest = Digest(archive.md5_of)
    tmp = root / f".{archive.filename}.{uuid.uuid4().hex}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # 0666 less the umask
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
        if not digest.matches(archive):
            raise DatasetError(
                f"{archive.url}: {digest.mismatch(archive)}; "
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
