"""Atomic writing (mammo_lib.utils.files): no partial file or temporary file after a failing writer, the old
file survives, modes follow the umask, JSON bytes and round trip, PNG figures, torch objects,
atomic folders."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mammo_lib.utils import files as mio  # noqa: E402


def _boom(tmp) -> None:
    tmp.write_text("half")  # something reached the temp file ...
    raise RuntimeError("writer failed")  # ... then the writer fails


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


# (name, call(path), exception, message fragment): every writer fails and must leave nothing behind
FAILING_CASES = [
    ("atomic_write", lambda p: mio.atomic_write(p, _boom), RuntimeError, "writer failed"),
    ("write_text non-str", lambda p: mio.write_text(p, 123), TypeError, "must be a str"),
    ("write_json circular", lambda p: mio.write_json(p, (c := [], c.append(c))[0]), ValueError, "Circular"),
    ("save_torch", lambda p: mio.save_torch({"x": _Unpicklable()}, p), RuntimeError, "cannot pickle"),
    ("save_figure suffix", lambda p: mio.save_figure(Figure(), p.with_suffix(".pdf")), ValueError, "PNG"),
    ("save_figure non-figure", lambda p: mio.save_figure("fig", p), TypeError, "Figure"),
]


@pytest.mark.parametrize("name,call,exc,match", FAILING_CASES, ids=[c[0] for c in FAILING_CASES])
def test_failing_writer_leaves_old_file_and_no_temp_file(tmp_path, name, call, exc, match):
    target = tmp_path / "x.png"
    target.write_text("old")
    with pytest.raises(exc, match=match):
        call(target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_failing_writer_creates_no_target(tmp_path):
    with pytest.raises(RuntimeError):
        mio.atomic_write(tmp_path / "new.txt", _boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_and_folders_follow_the_umask(tmp_path, umask, mode):
    """mkstemp creates 0600 and mkdtemp 0700; the results get what open()/mkdir would give."""
    old = os.umask(umask)
    try:
        assert mio.default_file_mode() == mode and mio.default_dir_mode() == mode | 0o111 & ~umask
        paths = [mio.write_text(tmp_path / "t.md", "x\n"), mio.write_json(tmp_path / "j.json", {}),
                 mio.write_csv(tmp_path / "c.csv", pd.DataFrame({"a": [1]})),
                 mio.save_torch({"a": 1}, tmp_path / "w.pt")]
        d = tmp_path / "d"
        mio.atomic_dir(d, lambda tmp: None)
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode] * 4
    assert d.stat().st_mode & 0o777 == 0o777 & ~umask


def test_json_bytes_and_round_trip(tmp_path):
    obj = {"b": np.float64(0.25), "a": (1, np.int64(2)), "c": np.array([[1, 2]]), "d": np.bool_(True),
           "p": tmp_path / "f", "t": torch.float32}
    p = mio.write_json(tmp_path / "new" / "x.json", obj)
    text = p.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "b": 0.25,\n  "a": [\n    1,\n    2\n  ],')  # indent 2
    back = json.loads(text)
    assert back == {"a": [1, 2], "b": 0.25, "c": [[1, 2]], "d": True, "p": str(tmp_path / "f"),
                    "t": "torch.float32"}
    assert list(back) == ["b", "a", "c", "d", "p", "t"]  # the dict's order: a resumed run row keeps its columns
    assert mio.to_jsonable(obj) == back and list(mio.to_jsonable(obj)) == list(back)


def test_csv_bytes_match_pandas(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "x": [0.1, 1 / 3], "n": [1, 2]})
    p = mio.write_csv(tmp_path / "t.csv", df)
    ref = tmp_path / "ref.csv"
    df.to_csv(ref, index=False)
    assert p.read_bytes() == ref.read_bytes() == b"id,x,n\na,0.1,1\nb,0.3333333333333333,2\n"


def test_save_figure_png(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = mio.save_figure(fig, tmp_path / "nested" / "dir" / "cm")
    assert path == tmp_path / "nested" / "dir" / "cm.png"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert sorted(p.name for p in path.parent.iterdir()) == ["cm.png"]  # no temp file left


def test_save_torch_round_trip(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "n": 3}
    back = torch.load(mio.save_torch(obj, tmp_path / "a" / "w.pt"))
    assert torch.equal(back["w"], obj["w"]) and back["n"] == 3


def test_atomic_dir_replaces_and_survives_failure(tmp_path):
    d = tmp_path / "out"
    assert mio.atomic_dir(d, lambda tmp: (tmp / "a.txt").write_text("one")) == 3
    mio.atomic_dir(d, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in d.iterdir()) == ["b.txt"]  # replaced, not merged

    def fail(tmp):
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        mio.atomic_dir(d, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (d / "b.txt").read_text() == "two"


def test_atomic_dir_race_keeps_an_accepted_folder(tmp_path, monkeypatch):
    """A folder another process renames into place just before ours (the rename then fails) is
    kept when ``accept_existing`` accepts it, else the error propagates; no temp folder is left."""
    d = tmp_path / "out"
    real_replace = os.replace

    def racing_replace(src, dst):
        if os.fspath(dst) == os.fspath(d) and ".tmp-" in os.fspath(src):
            d.mkdir()
            (d / "theirs").write_text("1")  # the other process wins
        return real_replace(src, dst)

    monkeypatch.setattr(mio.os, "replace", racing_replace)
    mio.atomic_dir(d, lambda tmp: (tmp / "mine").write_text("1"), accept_existing=lambda t: (t / "theirs").exists())
    assert [p.name for p in d.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["out"]

    (d / "theirs").unlink()
    d.rmdir()
    with pytest.raises(OSError):
        mio.atomic_dir(d, lambda tmp: (tmp / "mine").write_text("1"), accept_existing=lambda t: False)
    assert [p.name for p in d.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_io_is_a_leaf():
    """io imports nothing from mammo_lib (any module may use it without a cycle)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(mio))
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert all(n.level == 0 and not (n.module or "").startswith("mammo_lib") for n in froms)
