"""Atomic writing: every result file and folder of the package is written here (docs/ARCHITECTURE.md,
"Writing results"; docs/DECISIONS.md, "Atomic writes").

A file is written to a temporary file in the target's folder and renamed over the target with
``os.replace``: a reader sees the old file or the complete new one, never a partial one, and a
writer that fails leaves the old file and no temporary file behind. New files get the mode a
plain ``open(path, "w")`` would give (:func:`default_file_mode`). A folder is built in a
temporary sibling and swapped in the same way (:func:`atomic_dir`).

This module is a leaf: it imports nothing from ``mammo_lib``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_json(d / "a" / "x.json", {"b": 1, "a": [1, 2]})
>>> p.read_text()
'{\\n  "b": 1,\\n  "a": [\\n    1,\\n    2\\n  ]\\n}\\n'
>>> sorted(f.name for f in p.parent.iterdir())
['x.json']
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

__all__ = ["default_file_mode", "default_dir_mode", "atomic_write", "write_text", "write_json", "to_jsonable",
           "write_csv", "save_figure", "save_torch", "atomic_dir", "DiskFullError", "read_done_marker"]

#: errno values that mean the file system has no room left (disk full, quota exceeded).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """The disk (or quota) is full while writing ``filename``: one line saying so and naming the
    file, instead of ``No space left on device`` with no path or torch's ``unexpected pos``."""

    def __init__(self, path: str | os.PathLike, detail: str = "") -> None:
        try:
            free = f"; {shutil.disk_usage(Path(path).parent).free} bytes free there"
        except OSError:
            free = ""
        super().__init__(errno.ENOSPC, f"the disk is full: could not write {path} "
                                       f"({detail or 'No space left on device'}{free}); free some space and run "
                                       "again (finished work is kept)")


def _is_disk_full(err: BaseException) -> bool:
    """An OSError with ENOSPC / EDQUOT, or torch's writer failing on a full disk (``unexpected pos``,
    ``file write failed``), also when chained."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        text = str(err)
        if isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text
                                              or "No space left" in text):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def read_done_marker(path: str | os.PathLike, what: str = "result") -> Optional[dict]:
    """The JSON object a finished run wrote last (its ``result.json``), or None with a warning
    naming ``path`` when it cannot be read back (torn, not JSON, not an object): the caller
    treats it like a damaged checkpoint and computes the run again (docs/DECISIONS.md,
    "Data-side fault cases")."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.warn(f"damaged {what} {path} ({type(err).__name__}: {err}); training it again", stacklevel=2)
        return None
    if not isinstance(saved, dict):
        warnings.warn(f"damaged {what} {path} (holds a JSON {type(saved).__name__}, not an object); training it "
                      "again", stacklevel=2)
        return None
    return saved


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask). Atomic
    writers create their temporary file with ``mkstemp`` (0o600) and set this before renaming, so
    result files are as readable by the group as any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def default_dir_mode() -> int:
    """The mode a plain ``os.mkdir`` would give a new folder (0o777 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Missing folders are created. If ``write`` raises, the temporary file is removed, the old
    ``path`` (if any) is untouched and the exception propagates. ``suffix`` is the temporary
    file's suffix (e.g. ``".npz"`` for writers that append one). Returns ``path``.

    >>> import tempfile, pathlib
    >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "t.txt", lambda tmp: tmp.write_text("hi"))
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path, str(getattr(err, "strerror", None) or err)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, ``"\\n"`` line ends kept as given) to ``path`` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} (writing {path})")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)


def _json_default(o: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and lists, paths as strings, anything else
    as ``str(o)`` (a run key holding e.g. a dtype still writes)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as :func:`write_json` stores it and ``json.load`` reads it back (e.g. tuples as
    lists, NumPy scalars as numbers): compare a run key with a stored one through this."""
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically: indent 2, keys in the dict's own order (a
    stored run row reads back with its columns in order), trailing newline (docs/DECISIONS.md,
    "Atomic writes"); see :func:`to_jsonable` for non-JSON values."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, df: Any) -> Path:
    """Write the ``pandas.DataFrame`` ``df`` to ``path`` atomically: no index, ``"\\n"`` line ends,
    UTF-8 (the bytes of ``df.to_csv(path, index=False)`` on POSIX)."""
    return write_text(path, df.to_csv(index=False, lineterminator="\n"))


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write the matplotlib ``fig`` as a PNG at ``path`` atomically, creating folders.

    A path without suffix gets ``.png``; another suffix is a ``ValueError``. The figure is not
    closed. Returns the path written.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; got suffix {path.suffix!r} in {path}")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"),
                        suffix=".png")


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_dir(target: str | os.PathLike, build: Callable[[Path], T], *,
               accept_existing: Optional[Callable[[Path], bool]] = None) -> T:
    """Build a folder with ``build(tmp)`` in a temporary sibling of ``target``, then swap it in.

    An existing ``target`` is moved aside and deleted after the swap. If the rename fails
    because another process put a folder there first, ``accept_existing(target)`` decides
    whether that folder is as good (kept, no error) or the ``OSError`` propagates. The folder
    gets the mode of a plain ``mkdir``; on any failure the temporary folder is removed. Returns
    what ``build`` returned.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> atomic_dir(d, lambda tmp: (tmp / "f.txt").write_text("x"))
    1
    >>> [f.name for f in d.iterdir()]
    ['f.txt']
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    trash: Optional[Path] = None
    try:
        os.chmod(tmp, default_dir_mode())
        try:
            result = build(tmp)
        except (OSError, RuntimeError) as err:
            if _is_disk_full(err) and not isinstance(err, DiskFullError):
                raise DiskFullError(target, str(getattr(err, "strerror", None) or err)) from err
            raise
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / "old")
        try:
            os.replace(tmp, target)
        except OSError:
            if trash is not None and not target.exists():
                os.replace(trash / "old", target)  # put the old folder back
            if accept_existing is None or not accept_existing(target):
                raise
    finally:
        for path in (tmp, trash):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
    return result
