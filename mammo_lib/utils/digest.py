"""Digests of the package's own source: part of every cache key (:func:`mammo_lib.repro.config.stage_key`),
so a change of the code that makes an artefact makes a new one."""
from __future__ import annotations

import hashlib
from pathlib import Path


def code_digest(*modules: str, root: Path | None = None) -> str:
    """Digest of the source of ``mammo_lib`` modules, named by their dotted path below the package
    (``"engines.training"`` -> ``mammo_lib/engines/training.py``; a package such as ``"data.phantom"``
    -> every ``.py`` file under ``mammo_lib/data/phantom/``).

    >>> len(code_digest("repro.config"))
    12
    """
    h = hashlib.sha256()
    base = root or Path(__file__).resolve().parents[1]
    for m in modules:
        h.update(m.encode() + b"\0")
        pkg = base.joinpath(*m.split("."))
        files = sorted(pkg.rglob("*.py")) if pkg.is_dir() else [pkg.with_name(pkg.name + ".py")]
        for f in files:
            h.update(f.relative_to(base).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()[:12]
