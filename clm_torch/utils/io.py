"""Safe file output: atomic checkpoint writes, formula-escaped CSV, safe checkpoint loading."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or of another model class."""


class CheckpointClassError(CheckpointError):
    """A checkpoint of another model class (``saved``) than the one loading it (``expected``)."""

    def __init__(self, message: str, *, saved: str, expected: str) -> None:
        super().__init__(message)
        self.saved, self.expected = saved, expected


class SettingError(ValueError):
    """A setting (from the command line or a config) of the wrong type or out of range, e.g.
    ``trainer.max_epochs=abc``; the message names the setting. The CLIs print it as one line."""


def is_number(v: Any) -> bool:
    """A finite int or float, NumPy scalars included (not a bool; an int too large for a float is not
    one either)."""
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # a 400-digit integer
        return False


def is_whole(v: Any, lo: int | None = None) -> bool:
    """An int (not a bool; a NumPy integer too), at least ``lo`` when given."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and (lo is None or v >= lo)


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask. ``tempfile.mkstemp``
    creates its file 0o600, so a file written through it and renamed into place would be readable by
    its owner alone (a checkpoint that a teammate cannot load, a metrics.json a dashboard cannot read)."""
    try:  # Linux: read it without setting it (os.umask sets it for every thread while it is asked)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path`` (with the
    permissions a plain write would give it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _new_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes every checkpoint atomically (temp file + rename).

    A process killed in the middle of a save leaves the previous file intact and loadable.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            os.chmod(tmp, _new_file_mode())
            torch.save(checkpoint, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def escape_formula(value: Any) -> Any:
    """Prefix a cell that a spreadsheet would read as a formula with a single quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv_safe(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a CSV whose text cells cannot be read as spreadsheet formulas; atomically."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_formula)
    out.columns = [escape_formula(str(c)) for c in out.columns]
    kwargs.setdefault("index", False)
    atomic_write_bytes(path, out.to_csv(**kwargs).encode("utf-8"))
    return Path(path)


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as ``null``: strict JSON, which every reader accepts."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` as strict JSON (NaN and infinities as ``null``), written atomically."""
    text = json.dumps(_json_safe(json.loads(json.dumps(obj, default=float))), indent=2, sort_keys=True,
                      allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return Path(path)


def load_checkpoint_safely(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing/corrupt/unsafe files."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.is_dir():
        inside = next((c for c in (p / "checkpoints" / "best.ckpt", p / "best.ckpt", p / "checkpoints" / "last.ckpt")
                       if c.is_file()), None)
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file; pass "
                              f"{inside if inside is not None else '<run dir>/checkpoints/best.ckpt'}, or load a "
                              "run directory with clm_torch.load_run")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint is empty (0 bytes)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except PermissionError:
        raise CheckpointError(f"{p}: cannot read the checkpoint: permission denied (ask its owner to make it "
                              "readable, e.g. chmod a+r, or copy it)") from None
    except __import__("pickle").UnpicklingError as e:
        raise CheckpointError(
            f"{p}: refused to load: the file is not a plain-weights checkpoint (it would need arbitrary "
            f"code to unpickle, or it is corrupt): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{p}: checkpoint is truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: not a Lightning checkpoint (no state_dict)")
    return ckpt
