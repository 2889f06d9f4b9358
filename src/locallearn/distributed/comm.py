"""Point-to-point messages between pipeline stages: a bundle of named tensors behind a shape header.

A stage hands the next one a few tensors per batch — the detached output h of its last module, the
labels, and the ContSup context the later boundaries read (the image for E modes, the kept ĥ_j for Rn
modes). Shapes change (the last batch of an epoch is shorter), so every message is two sends over
``torch.distributed``: a fixed-size int64 *header* (kind, batch index, and name, dtype and shape of each
tensor), then one flat byte *payload* holding all the tensors. Two sends per batch, whatever the number
of tensors, and the receiver learns every shape before it allocates.

``Outbox`` and ``Inbox`` move messages on background threads with a bounded queue, so a stage computes
batch t+1 while batch t is on the wire (double buffering with ``depth=2``). With ``depth=0`` every send
and receive happens on the caller's thread (the synchronous schedule).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.distributed as dist

HEADER_LEN = 256  # int64 slots; fits 27 tensors of up to 6 dimensions
_MAGIC = 0x10CA1
_MAX_DIMS = 6
_FIXED = 5  # magic, kind, index, number of tensors, payload bytes
_SLOT = 3 + _MAX_DIMS  # name code, dtype code, ndim, dims...
_ALIGN = 8  # payload offsets are multiples of 8 bytes, so every slice can be viewed as its dtype

_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)
_NAMES = ("h", "image", "labels")  # fixed names; "hist/j" (the context ĥ_j) is coded as 100 + j
_HIST = 100


class Kind(IntEnum):
    TRAIN = 0  # a training batch
    EVAL = 1  # an evaluation batch
    END = 2  # the end of a phase (an epoch's training or evaluation)
    STOP = 3  # no more messages: the receiving thread exits


@dataclass
class Message:
    kind: Kind
    index: int = 0  # the batch's position in its phase
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class CommError(RuntimeError):
    """Communication with ``peer`` failed (it died, or the link broke)."""

    def __init__(self, peer: int, cause: BaseException) -> None:
        super().__init__(f"communication with rank {peer} failed: {type(cause).__name__}: {cause}")
        self.peer = peer


# --- encoding ------------------------------------------------------------------------------------------
def _name_code(name: str) -> int:
    if name in _NAMES:
        return _NAMES.index(name)
    if name.startswith("hist/"):
        return _HIST + int(name[5:])
    raise ValueError(f"message: cannot send a tensor named {name!r}; valid names are h, image, labels, hist/<j>.")


def _code_name(code: int) -> str:
    return _NAMES[code] if code < _HIST else f"hist/{code - _HIST}"


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def encode(message: Message, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(header, payload) of a message; payload is None when the message carries no tensors."""
    tensors = list(message.tensors.items())
    if _FIXED + _SLOT * len(tensors) > HEADER_LEN:
        raise ValueError(f"message: {len(tensors)} tensors do not fit a {HEADER_LEN}-slot header.")
    header = [0] * HEADER_LEN
    offsets, total = [], 0
    for i, (name, t) in enumerate(tensors):
        if t.dim() > _MAX_DIMS:
            raise ValueError(f"message: tensor {name!r} has {t.dim()} dimensions; at most {_MAX_DIMS} are supported.")
        slot = _FIXED + _SLOT * i
        header[slot : slot + 3 + t.dim()] = [_name_code(name), _DTYPES.index(t.dtype), t.dim(), *t.shape]
        offsets.append(total)
        total += _padded(t.numel() * t.element_size())
    header[:_FIXED] = [_MAGIC, int(message.kind), message.index, len(tensors), total]
    header_t = torch.tensor(header, dtype=torch.int64, device=device)
    if not tensors:
        return header_t, None
    payload = torch.empty(total, dtype=torch.uint8, device=device)
    for (_, t), offset in zip(tensors, offsets):
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)  # values only: no graph crosses ranks
        payload[offset : offset + flat.numel()].copy_(flat)
    return header_t, payload


def decode_header(header: torch.Tensor) -> tuple[Kind, int, list[tuple[str, torch.dtype, tuple[int, ...]]], int]:
    """(kind, index, [(name, dtype, shape)], payload bytes) from a received header."""
    h = header.tolist()
    if h[0] != _MAGIC:
        raise RuntimeError(f"message: corrupt header (magic {h[0]:#x}); the ranks are out of step.")
    kind, index, n, total = Kind(h[1]), h[2], h[3], h[4]
    specs = []
    for i in range(n):
        slot = _FIXED + _SLOT * i
        code, dtype, ndim = h[slot : slot + 3]
        specs.append((_code_name(code), _DTYPES[dtype], tuple(h[slot + 3 : slot + 3 + ndim])))
    return kind, index, specs, total


def decode(header: torch.Tensor, payload: torch.Tensor | None) -> Message:
    kind, index, specs, _ = decode_header(header)
    tensors, offset = {}, 0
    for name, dtype, shape in specs:
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        tensors[name] = payload[offset : offset + nbytes].view(dtype).view(shape)
        offset += _padded(nbytes)
    return Message(kind, index, tensors)


# --- blocking send / receive ---------------------------------------------------------------------------
def send_message(message: Message, dst: int, *, group=None, device: torch.device | str = "cpu") -> None:
    """Send ``message`` to global rank ``dst`` (blocking). Raises CommError naming ``dst`` on failure."""
    header, payload = encode(message, device)
    try:
        dist.send(header, dst, group=group)
        if payload is not None:
            dist.send(payload, dst, group=group)
    except Exception as err:  # gloo/NCCL raise RuntimeError subclasses when the peer is gone
        raise CommError(dst, err) from err


def recv_message(src: int, *, group=None, device: torch.device | str = "cpu") -> Message:
    """Receive the next message from global rank ``src`` (blocking). Raises CommError naming ``src``."""
    header = torch.empty(HEADER_LEN, dtype=torch.int64, device=device)
    try:
        dist.recv(header, src, group=group)
        total = decode_header(header)[3]
        payload = None
        if total:
            payload = torch.empty(total, dtype=torch.uint8, device=device)
            dist.recv(payload, src, group=group)
    except CommError:
        raise
    except Exception as err:
        raise CommError(src, err) from err
    return decode(header, payload)


# --- overlapped transport ------------------------------------------------------------------------------
_CLOSE = object()
_POLL_S = 0.5  # how often a blocked caller looks whether the transport thread failed


class Outbox:
    """Sends messages to one peer. ``depth`` > 0: on a background thread, at most ``depth`` waiting, so
    the caller computes the next batch while this one is sent; ``depth`` = 0: blocking, on the caller."""

    def __init__(self, dst: int, *, group=None, device: torch.device | str = "cpu", depth: int = 2) -> None:
        self.dst, self.group, self.device, self.depth = dst, group, device, depth
        self.wait_s = 0.0  # time the caller spent blocked because the queue was full
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._loop, name=f"outbox->{dst}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            try:
                send_message(item, self.dst, group=self.group, device=self.device)
            except BaseException as err:  # handed to the caller on its next put/close
                self._error = err
                return

    def put(self, message: Message) -> None:
        if self._thread is None:
            send_message(message, self.dst, group=self.group, device=self.device)
            return
        start = time.perf_counter()
        while True:
            self._check()
            try:
                self._queue.put(message, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        """Wait until every queued message is sent, then stop the thread."""
        if self._thread is None:
            return
        while self._thread.is_alive():
            self._check()
            try:
                self._queue.put(_CLOSE, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        while self._thread.is_alive():
            self._thread.join(_POLL_S)
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class Inbox:
    """Receives messages from one peer. ``depth`` > 0: a background thread receives up to ``depth``
    messages ahead of the caller (until a STOP message); ``depth`` = 0: blocking, on the caller."""

    def __init__(self, src: int, *, group=None, device: torch.device | str = "cpu", depth: int = 2) -> None:
        self.src, self.group, self.device, self.depth = src, group, device, depth
        self.wait_s = 0.0  # time the caller spent waiting for a message
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._loop, name=f"inbox<-{src}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                message = recv_message(self.src, group=self.group, device=self.device)
            except BaseException as err:
                self._queue.put(err)
                return
            self._queue.put(message)
            if message.kind == Kind.STOP:
                return

    def get(self) -> Message:
        start = time.perf_counter()
        if self._thread is None:
            message = recv_message(self.src, group=self.group, device=self.device)
        else:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put(item)  # every later get fails the same way
                raise item
            message = item
        self.wait_s += time.perf_counter() - start
        return message

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=_POLL_S)
