"""Safe output: check a destination *before* any work, and write files atomically.

Every file georobust writes (results, weights, checkpoints, figures' JSON) goes through :func:`atomic_target`
or the helpers built on it: the data is written to a temporary file in the destination's folder, flushed,
and renamed over the destination, so a crash or a kill never leaves half a file behind. Entry points that
run long work call :func:`ensure_writable` first, so an unwritable destination is a one-line error before
the work, not a traceback after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, WeightsError


def _probe_dir(d: Path, what: str) -> None:
    """Create ``d`` (and its parents) if needed and check that a file can be created in it."""
    if d.exists() and not d.is_dir():
        raise OutputError(f"{what}: {d} exists and is not a folder")
    for parent in [d, *d.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what}: {parent} is not a folder")
            break
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".georobust-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {d} ({e.strerror or e})") from None


def ensure_writable(path: str | Path, *, directory: bool = False, overwrite: bool = True,
                    what: str = "output") -> Path:
    """Check that ``path`` can be written, before any work; return it as a :class:`~pathlib.Path`.

    ``directory=True``: ``path`` is a folder to write files into (created if missing; an existing *file* there
    is an error). Otherwise ``path`` is a file: its folder must be writable and ``path`` must not be a folder;
    with ``overwrite=False`` an existing file is refused too. Raises :class:`~georobust.errors.OutputError`.
    """
    p = Path(path)
    if directory:
        _probe_dir(p, what)
        return p
    if p.is_dir():
        raise OutputError(f"{what}: {p} is a folder, expected a file name")
    if p.exists() and not overwrite:
        raise OutputError(f"{what}: {p} exists; choose another name or allow overwriting")
    _probe_dir(p.parent if str(p.parent) else Path("."), what)
    return p


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and keeps the suffix of
    ``path`` (some writers look at it).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=p.suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, p)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + rename)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes (checkpoints carry it and are verified against it on resume)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_safetensors(path: str | Path, state: dict, metadata: dict[str, str], *, sidecar: dict | None = None,
                      what: str = "weights") -> Path:
    """Write tensors ``state`` with string ``metadata`` to the safetensors file ``path`` atomically, then
    ``sidecar`` (when given) as JSON to ``path`` with the suffix ``.json`` (atomically, after the tensors).
    Every model-like file georobust writes (zoo weights, defended models, detectors) goes through here.
    Raises :class:`~georobust.errors.OutputError` naming ``what`` when it cannot write."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_target(path) as tmp:
            save_file(state, str(tmp), metadata=metadata)
        if sidecar is not None:
            atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))
    except OSError as e:
        raise OutputError(f"cannot write {what} to {path}: {e.strerror or e}; choose another location") from None
    return path


def read_safetensors(path: str | Path, *, what: str = "weights file") -> tuple[dict, dict[str, str]]:
    """``(tensors, metadata)`` of the safetensors file ``path`` (on the CPU). Safetensors holds tensors and
    strings only, so reading it never runs code. Raises :class:`~georobust.errors.WeightsError` when the file
    is missing (naming ``what``) or unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
