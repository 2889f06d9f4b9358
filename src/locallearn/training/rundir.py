"""The run directory and its checkpoints.

    RUN/config.yaml      the resolved TrainConfig (written once, at the start)
    RUN/metrics.jsonl    one JSON object per finished epoch
    RUN/checkpoint.pt    the state after the last finished epoch, replaced atomically every epoch
    RUN/summary.json     written when the run finishes; its presence is what "finished" means

Every epoch appends its metrics line *before* replacing the checkpoint, and the checkpoint carries the
metrics history itself. A kill at any moment therefore leaves a checkpoint that is never ahead of
metrics.jsonl, and resuming rewrites metrics.jsonl from the checkpoint's history: no duplicate, missing or
half-written epoch survives. Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, SUMMARY)
CHECKPOINT_FORMAT = 2  # 1: before local objectives were modules (``net.py`` migrates its weights)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.file(SUMMARY).is_file()

    @property
    def started(self) -> bool:
        return any(self.file(name).exists() for name in RUN_FILES)

    def clear(self) -> None:
        """Remove this run's files (and nothing else: the directory may hold a user's own files)."""
        for name in RUN_FILES:
            for path in (self.file(name), _tmp_path(self.file(name))):
                if path.exists():
                    path.unlink()

    # --- text files ---------------------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.file(CONFIG), lambda f: f.write(text.encode()))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl by ``records`` (used when resuming)."""
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(self.file(METRICS), lambda f: f.write(text.encode()))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2, default=_plain) + "\n"
        atomic_write(self.file(SUMMARY), lambda f: f.write(text.encode()))

    def read_summary(self) -> dict[str, Any] | None:
        path = self.file(SUMMARY)
        return json.loads(path.read_text()) if path.is_file() else None

    # --- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save(state, f))

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
        path = self.file(CHECKPOINT)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # unpickling errors have many types; all mean the same to the user
            raise ValueError(f"{path} cannot be read ({' '.join(str(err).split())[:200]}).") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a locallearn checkpoint (format {CHECKPOINT_FORMAT}).")
        return state


def _plain(value: Any) -> Any:
    """JSON for NumPy / torch scalars (``.item()``) that reach a summary through ``net.describe()``."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file, fsync it, then rename over ``path``: readers (and a resumed run)
    see the old file or the new one, never a torn one."""
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
