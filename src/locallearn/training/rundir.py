"""The run directory: what a run owns, written so that a crash, a second writer or a damaged file never
loses or mixes results.

    RUN/config.yaml         the resolved config, with the run's id and thread count (written once, at the start)
    RUN/metrics.jsonl       one JSON object per finished epoch, each with the checksum of its own content
    RUN/checkpoint.pt       the state after the last finished epoch, with a digest of its content
    RUN/checkpoint.prev.pt  the one before it (a resume falls back to it if checkpoint.pt is damaged)
    RUN/summary.json        written when the run finishes; its presence is what "finished" means; with the
                            options it trained with and the checksum of its own content
    RUN/train.log           the run's log, where it is not printed (cells of ``locallearn bench accuracy``)
    RUN/pretrained.json     the configuration of the transformers checkpoint the run started from, if any:
                            eval, a resume and load_net build that architecture and load the run's own
                            weights, without the checkpoint (which may have moved, or be a hub name offline)
    RUN/test_files.json     an image folder's test images (paths within --data-dir, labels), in the order they are
                            tested: the held-out split of --test-fraction, to evaluate anything else on; written at
                            every start, so after a resume on a folder that changed it lists the folder as it is
    RUN/pipeline/           per-stage checkpoints of a module-parallel run (``locallearn.distributed``)
    RUN/.lock               held (an OS file lock) by the one process that writes the run

Every epoch appends its metrics line *before* replacing the checkpoint, and the checkpoint carries the
metrics history itself. A kill at any moment therefore leaves a checkpoint that is never ahead of
metrics.jsonl, and resuming rewrites metrics.jsonl from the checkpoint's history: no duplicate, missing or
half-written epoch survives (and one put there by hand is named: the lines must hold epochs 1, 2, ...). Files are written to a temporary file of a unique name, created exclusively
(never through a planted link), then renamed into place. Every checkpoint and stage file carries the
run's id, so a resume can tell a file of this run from one an earlier run left behind. Checkpoints hold
only tensors and plain Python values, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
SUMMARY = "summary.json"
LOG = "train.log"  # a run's log, where its lines are not printed (``locallearn bench accuracy`` cells)
STAGES = "pipeline"
LOCK = ".lock"
PRETRAINED = "pretrained.json"
WRITTEN_BY_TRAIN = "give a directory written by `locallearn train`"  # ``RunDir.no_config``'s usual fix
TEST_FILES = "test_files.json"  # an image folder's test images (``write_test_files``)
# the options of a run being started, written before its data and network are built and removed once config.yaml
# is written: a run killed in between is resumed with them (not with the resume command's defaults)
START = ".start.yaml"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, PREVIOUS, SUMMARY, LOG, PRETRAINED, TEST_FILES, START)
CHECKPOINT_FORMAT = 2  # 1: before local objectives were modules and checkpoints had digests (``net.py`` migrates)
_TMP_SUFFIX = ".tmp"


class RunLockedError(ValueError):
    """Another process writes this run directory."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(os.path.expanduser(self.path)))  # "~/runs/x" given in quotes

    def file(self, name: str) -> Path:
        return self.path / name

    def no_config(self, reader: str = "", otherwise: str = "") -> str:
        """The refusal of a directory without config.yaml, naming the way back where a checkpoint is left, else
        ``otherwise`` (a fix of the caller's, e.g. "give a directory written by ...")."""
        back = (f"; its {CHECKPOINT} holds the run's options: its resume (`locallearn train --out "
                f"{shlex.quote(str(self.path))} --resume`, or train(..., resume=True) for a run from Python) writes "
                f"{CONFIG} again from it, and continues the run if it is unfinished" if self.has_checkpoint() else
                f"; {otherwise}" if otherwise else "")
        return f"{reader}{self.path} holds no run (no {CONFIG}){back}"

    @property
    def finished(self) -> bool:
        return self.file(SUMMARY).is_file()

    @property
    def started(self) -> bool:
        return any(self.file(name).exists() for name in RUN_FILES) or self.file(STAGES).exists()

    @property
    def untrained(self) -> bool:
        """Started but stopped before its first epoch ended: no checkpoint, no stage file, no summary and no
        epoch in metrics.jsonl, so starting it over loses nothing."""
        if any(self.file(name).exists() for name in (CHECKPOINT, PREVIOUS, SUMMARY)):
            return False
        if self.file(STAGES).is_dir() and any(self.file(STAGES).iterdir()):
            return False
        return not (self.file(METRICS).is_file() and self.file(METRICS).read_bytes().strip())

    def results(self) -> list[str]:
        """The results held beyond a first epoch cut short (a kill between an epoch's metrics line and its
        checkpoint leaves one line): 'N epochs in metrics.jsonl' where more than one is logged, 'summary.json'
        where the run finished. Empty where starting the run again would replace nothing of worth."""
        logged = len(self.file(METRICS).read_bytes().splitlines()) if self.file(METRICS).is_file() else 0
        finished = self.finished and self.file(SUMMARY).stat().st_size > 0
        return ([f"{logged} epochs in {METRICS}"] if logged > 1 else []) + ([SUMMARY] if finished else [])

    def has_checkpoint(self, *, stages: bool = False) -> bool:
        """A checkpoint of the whole network is here (sound or not); with ``stages`` (a pipeline's resume, which
        reads them) also a pipeline stage's checkpoint."""
        if self.file(CHECKPOINT).is_file() or self.file(PREVIOUS).is_file():
            return True
        return stages and bool(self._stage_files())

    def _stage_files(self) -> list[Path]:
        """The pipeline's stage checkpoints here (sound or not)."""
        return list(self.file(STAGES).glob("stage*-epoch*.pt")) if self.file(STAGES).is_dir() else []

    def pipeline_ranks(self) -> int | None:
        """How many ranks wrote the pipeline stage files here (stages × data-parallel, read from the newest sound
        one), or None where there is none."""
        for path in sorted(self._stage_files(), key=lambda p: p.stat().st_mtime, reverse=True):
            with contextlib.suppress(ValueError):
                layout = load_state(path).get("layout")
                if layout:
                    return int(layout["stages"]) * int(layout["data_parallel"])
        return None

    def present(self) -> list[str]:
        """The run's own files (and the stage directory) that exist here."""
        return [name for name in (*RUN_FILES, STAGES) if self.file(name).exists()]

    def clear(self) -> None:
        """Remove everything the run before owned — its files, their temporaries, the stage checkpoints — and
        nothing else: the directory may hold a user's own files. The start record is the new run's (written
        before this is called) and stays until its config.yaml is written."""
        for name in RUN_FILES:
            if name != START:
                self.file(name).unlink(missing_ok=True)
        self.remove_temporaries()
        if self.file(STAGES).is_dir() and not self.file(STAGES).is_symlink():
            shutil.rmtree(self.file(STAGES))
        else:
            self.file(STAGES).unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Remove what a process killed while writing one of the run's files left (``atomic_write``'s
        temporaries); call it under the lock, which every writer holds."""
        if self.path.is_dir():
            for leftover in self.path.glob(f".*{_TMP_SUFFIX}"):
                if any(leftover.name.startswith(f".{name}.") for name in RUN_FILES):
                    leftover.unlink(missing_ok=True)

    # --- the lock -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's OS file lock (``RUN/.lock``, released when the process exits, even on a crash);
        a second writer is refused in one line naming the holder's pid. A directory created only to hold the
        lock is removed again if nothing else was written into it."""
        created = not self.path.exists()
        refuse_file(self.path)
        path = self.file(LOCK)
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                raise ValueError(f"{self.path} cannot be written ({err.strerror.lower()}): a run directory holds the "
                                 f"run's lock and results; copy the run to a writable place, or choose another "
                                 f"--out.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_pid(fd)
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunLockedError(
                        f"{self.path} is being written by another locallearn process (pid {holder}); wait for it to "
                        f"end, or choose another --out."
                    ) from None
                raise
            if _same_file(fd, path):  # not a lock file another process unlinked while we waited
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held: a waiting process re-checks the inode
            os.close(fd)
            if created and self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()

    # --- text files ---------------------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.file(CONFIG), lambda f: f.write(text.encode()))

    def write_start(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.file(START), lambda f: f.write(text.encode()))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl by ``records`` (used when resuming)."""
        text = "".join(metrics_line(r) for r in records)
        atomic_write(self.file(METRICS), lambda f: f.write(text.encode()))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(metrics_line(record))
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, each checked against its checksum; a damaged line is named.

        Lines of earlier releases have no checksum; but this release writes every line with one and rewrites
        the whole file when it resumes a run, so in a file where some line has a checksum a line without one
        was edited (or written by hand) and is damaged too."""
        path = self.file(METRICS)
        if not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is damaged (not UTF-8 text: byte {err.start}); the checkpoint's history can "
                             f"rebuild it: resume the run.") from None
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        records, unchecked = [], []
        for number, line in lines:
            record, checked = parse_metrics_line(line, f"{path}, line {number}")
            records.append(record)
            if not checked:
                unchecked.append(number)
        if unchecked and len(unchecked) < len(lines):
            raise ValueError(f"{path}, line {unchecked[0]} is damaged (it has no checksum, which every other line "
                             f"has); the checkpoint's history can rebuild it: resume the run.")
        for expected, ((number, _), record) in enumerate(zip(lines, records), start=1):  # each line checks only itself
            if record.get("epoch") != expected:
                raise ValueError(f"{path}, line {number} is epoch {record.get('epoch')} where epoch {expected} belongs "
                                 f"(a line was removed, repeated or moved); the checkpoint's history can rebuild it: "
                                 f"resume the run.")
        return records

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json: strict JSON, with ``checksum`` (the SHA-256 of its content in one line) last."""
        record = json.loads(json.dumps(finite(summary), default=_json_scalar, allow_nan=False))
        record["checksum"] = content_checksum(record)
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
        atomic_write(self.file(SUMMARY), lambda f: f.write(text.encode()))

    def write_pretrained(self, config: dict[str, Any], run_id: str) -> None:
        text = json.dumps({"run_id": run_id, "config": config}, indent=2, sort_keys=True, default=_json_scalar) + "\n"
        atomic_write(self.file(PRETRAINED), lambda f: f.write(text.encode()))

    def write_test_files(self, record: dict[str, Any]) -> None:
        """test_files.json: ``record`` (``training.runner.test_files``) as JSON, one file to a line."""
        body = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items() if key != "files")
        files = ",\n".join(f"    {json.dumps(item)}" for item in record["files"])
        text = "{\n" + body + ',\n  "files": [\n' + files + "\n  ]\n}\n"
        atomic_write(self.file(TEST_FILES), lambda f: f.write(text.encode()))

    def read_pretrained(self, run_id: str) -> dict[str, Any] | None:
        """The checkpoint configuration this run recorded (``write_pretrained``); None where it has none, or
        where the file is another run's (``run_id`` is this run's: a copied file, or one an earlier release's
        --overwrite left behind), so that the network is then built from the checkpoint itself."""
        path = self.file(PRETRAINED)
        if not path.is_file():
            return None
        record = _read_json(path, "; delete it to build the network from its pretrained checkpoint again")
        if isinstance(record, dict) and "config" not in record and isinstance(record.get("model_type"), str):
            return None  # the bare configuration this stop's first layout wrote: not tied to a run, so not taken
        config = record.get("config") if isinstance(record, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ValueError(f"{path} cannot be read (not a transformers configuration); delete it to build the "
                             f"network from its pretrained checkpoint again")
        return config if run_id and record.get("run_id") == run_id else None

    def read_summary(self) -> dict[str, Any] | None:
        path = self.file(SUMMARY)
        if not path.is_file():
            return None
        summary = _read_json(path)
        if not isinstance(summary, dict):
            raise ValueError(f"{path} cannot be read (not a JSON object)")
        checksum = summary.pop("checksum", None)  # summaries of earlier releases have none
        if checksum is not None and content_checksum(summary) != checksum:
            raise ValueError(f"{path} is damaged (its checksum does not match)")
        return summary

    # --- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write checkpoint.pt; the one it replaces becomes checkpoint.prev.pt."""
        save_state(self.file(CHECKPOINT), state, previous=self.file(PREVIOUS))

    def load_checkpoint(self, map_location: torch.device | str = "cpu", *, fallback: bool = False,
                        log: Callable[[str], None] | None = None, problems: list[str] | None = None,
                        overwrite: str = "--overwrite") -> dict[str, Any] | None:
        """The state of checkpoint.pt (None if there is none), its digest verified. A damaged one is refused in
        one line — or, with ``fallback`` (a resume), replaced by checkpoint.prev.pt if that one is sound, which
        ``log`` is told. ``problems`` (a pipeline's resume, which may have stage files to resume from instead):
        what is wrong with each file is appended there, and a run without a sound one gives None, not an error.
        ``overwrite``: how the refusal names starting over (``overwrite=True`` for a run from Python)."""
        path = self.file(CHECKPOINT)
        for name in (CHECKPOINT, PREVIOUS):  # a directory (or a pipe) there is no interrupted write: say what it is
            if self.file(name).exists() and not self.file(name).is_file():
                raise ValueError(f"{self.file(name)} is not a file (a directory or another kind of entry stands where "
                                 f"the run keeps its checkpoint); move it away.")
        if not path.is_file() and not (fallback and self.file(PREVIOUS).is_file()):
            return None
        try:
            if not path.is_file():
                raise ValueError(f"{path} is missing (a write was interrupted)")
            state = load_state(path, map_location)
            _WRITTEN[path.resolve()] = _stamp(path)  # read soundly: the next save keeps it without reading it again
            return state
        except ValueError as err:
            previous = self.file(PREVIOUS)
            if problems is not None and not previous.is_file():  # a pipeline's resume may have stage files
                problems.append(str(err))
                return None
            if not fallback or not previous.is_file():
                if previous.is_file():
                    hint = f"; {previous.name} holds the epoch before it"
                elif fallback:  # a resume with nothing to fall back to
                    hint = f"; no earlier checkpoint is kept, so nothing is left to resume: start over with {overwrite}"
                else:
                    hint = "; restore it from a copy of the run, or train the run again"
                raise ValueError(f"{err}{hint}.") from None
            try:
                state = load_state(previous, map_location)
            except ValueError as second:
                if problems is not None:
                    problems += [str(err), str(second)]
                    return None
                raise ValueError(f"{err}; {second}; no sound checkpoint is left: start over with {overwrite}.") from None
            if problems is not None:
                problems.append(str(err))
            elif log is not None:
                log(f"warning: {err}; resuming from {previous.name} (epoch {state['epoch']}) instead.")
            return state


def refuse_file(path: Path, option: str = "--out") -> None:
    """A directory to write into must not be a file (``mkdir`` would say only "File exists")."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option.lstrip('-')}: {path} is a file, not a directory; choose another {option}.")


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except OSError:
        return "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return False


# --- metrics lines -----------------------------------------------------------------------------------------
def content_checksum(record: dict[str, Any]) -> str:
    """The checksum a metrics line and summary.json carry: the SHA-256 of the record as one line of strict JSON."""
    return hashlib.sha256(json.dumps(record, allow_nan=False).encode()).hexdigest()


def metrics_line(record: dict[str, Any]) -> str:
    """One line of metrics.jsonl: strict JSON (a non-finite number is written as null) with ``checksum``,
    the SHA-256 of the line's own content, last."""
    body = json.dumps(finite(record), allow_nan=False)
    checksum = hashlib.sha256(body.encode()).hexdigest()  # content_checksum's, of the string written
    return body[:-1] + f', "checksum": "{checksum}"}}\n' if body != "{}" else f'{{"checksum": "{checksum}"}}\n'


def parse_metrics_line(line: str, where: str) -> tuple[dict[str, Any], bool]:
    """A metrics record from its line, its checksum verified and removed, and whether it had one (lines of
    earlier releases have none)."""
    try:
        record = json.loads(line, parse_constant=_not_strict)
    except json.JSONDecodeError:
        raise ValueError(f"{where} is damaged (not valid JSON); the checkpoint's history can rebuild it: "
                         f"resume the run.") from None
    except _NotStrictJSON as err:  # written strict (``finite``) with a checksum: NaN or Infinity was put there
        record = json.loads(line)   # by hand, or the line is of an earlier release, which wrote neither
        if isinstance(record, dict) and "checksum" in record:
            raise ValueError(f"{where} is damaged ({err} is not strict JSON, which metrics.jsonl is written in); "
                             f"the checkpoint's history can rebuild it: resume the run.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where} is damaged (not a JSON object).")
    checksum = record.pop("checksum", None)
    if checksum is not None and content_checksum(record) != checksum:
        raise ValueError(f"{where} is damaged (its checksum does not match); the checkpoint's history can rebuild "
                         f"it: resume the run.")
    return record, checksum is not None


class _NotStrictJSON(Exception):
    pass


def _not_strict(constant: str) -> None:
    raise _NotStrictJSON(constant)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _read_json(path: Path, fix: str = "") -> Any:
    """The JSON value in the file ``path``; a file that is not JSON is refused in one line naming it, ``fix``
    appended."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}){fix}") from None


def _json_scalar(value: Any) -> Any:
    """JSON for NumPy / torch scalars (``.item()``) that reach a summary through ``net.describe()``."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- states on disk -------------------------------------------------------------------------------------------
# The checkpoint files this process wrote or read soundly, as (st_mtime_ns, st_size) then: a file that still has
# its stamp is sound; any other is read before it is kept as the one before.
_WRITTEN: dict[Path, tuple[int, int]] = {}


def save_state(path: Path, state: dict[str, Any], *, previous: Path | None = None) -> None:
    """``torch.save`` of ``state`` with its digest (``state_digest``), through a temporary file renamed into
    place; with ``previous``, the file it replaces is kept there — if it is sound: a damaged one (which a
    resume fell back past, to ``previous`` itself) is replaced, and ``previous`` stays the sound one."""
    state = {**state, "digest": state_digest({k: v for k, v in state.items() if k != "digest"})}

    def move_aside() -> None:
        if previous is not None and path.exists() and (_stamp(path) == _WRITTEN.get(path.resolve()) or _sound(path)):
            os.replace(path, previous)

    atomic_write(path, lambda f: torch.save(state, f), before_rename=move_aside)
    _WRITTEN[path.resolve()] = _stamp(path)


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _sound(path: Path) -> bool:
    try:
        load_state(path)
    except ValueError:
        return False
    return True


def load_state(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A state written by ``save_state``, its digest verified; ValueError in one line naming the file when it
    cannot be read, is not locallearn's, or does not match its digest."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (torch.OutOfMemoryError, MemoryError):
        raise  # the file may be sound; the device is full
    except OSError as err:  # permissions, a missing file, a disk error: the file was not read at all
        if err.errno == errno.EINVAL and err.filename is None:  # the zip reader seeking past a cut-off file's end
            raise ValueError(f"{path} cannot be read, it is damaged (cut short)") from None
        raise ValueError(f"{path} cannot be read ({' '.join(str(err).split())[:160]})") from None
    except Exception as err:  # unpickling and zip errors have many types; all mean the same to the user
        raise ValueError(f"{path} cannot be read, it is damaged ({_reason(err, path)})") from None
    if not isinstance(state, dict) or state.get("format") not in (1, CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not a locallearn checkpoint (format {CHECKPOINT_FORMAT})")
    if state["format"] == CHECKPOINT_FORMAT:
        stored = state.pop("digest", None)
        if stored != state_digest(state):
            raise ValueError(f"{path} is damaged (its content does not match the digest written with it)")
    return state


def _reason(err: Exception, path: Path) -> str:
    """Why a file could not be unpickled, in a few words: an empty file says so; otherwise the error's first
    sentence (torch's zip reader goes on with advice about something else), or its type when it has no text."""
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            if f.read(2) not in (b"PK", b"\x80\x02"):  # torch.save's zip archive, or its legacy pickle
                return "not a file written by torch.save"
    text = " ".join(str(err).split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return (first[:160].rstrip(".") if first else type(err).__name__)


def state_digest(obj: Any) -> str:
    """SHA-256 of a state's content: every tensor's dtype, shape and bytes, every plain value, in a fixed order."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key in sorted(obj, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, obj[key])
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[")
        for item in obj:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(obj).__name__}:{obj!r}".encode())


def write_output(path: Path | str, data: bytes) -> None:
    """A command's result file (a table, a figure, a list) through ``atomic_write``: whole or not at all, and a
    full disk said as "cannot write PATH (...)" rather than a bare errno beside an empty file."""
    atomic_write(Path(os.path.realpath(path)), lambda f: f.write(data))  # through a link the user made, to its target


def atomic_write(path: Path, write: Callable[[Any], Any], *, before_rename: Callable[[], None] | None = None) -> None:
    """Write through a temporary file of a unique name, created exclusively beside ``path`` (a planted link
    is never followed), fsync it, then rename it over ``path``: readers (and a resumed run) see the old file or
    the new one, never a torn one. A failed write (a full disk) removes the temporary and raises OSError."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
    # exclusive (O_EXCL: a planted link is never followed); mode 0666 less the umask, as any file the user
    # makes (mkstemp's 0600 kept a shared server's collaborators from reading results)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = " ".join(str(err).split())[:160]
        raise OSError(f"cannot write {path} (the disk may be full or read-only: {reason})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# --- random number generator states, as tensors and plain values (weights_only-loadable) -----------------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
