"""Progress bars of the library: ``tqdm.auto`` in a terminal or JupyterLab (widgets), and, during
``bash run.sh reproduce``, plain text bars appended to a file that the runner shows live.

The runner (:mod:`mammo_lib.repro.runner`) sets ``MAMMO_PROGRESS_FILE`` for the notebook kernels;
every bar then writes there instead of into the executed notebook, so a person watching the
terminal sees the step, its count and tqdm's time-left estimate while a notebook runs.

>>> bar = tqdm(range(3), disable=True)
>>> sum(bar)
3
"""
from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm as _text_tqdm
from tqdm.auto import tqdm as _auto_tqdm

#: Environment variable naming the file text bars are appended to.
ENV_PROGRESS_FILE = "MAMMO_PROGRESS_FILE"
#: The text bars' format in that file: no bar graphic (the runner's line must fit 80 columns),
#: count, elapsed and tqdm's time-left estimate (parsed by :func:`mammo_lib.repro.runner.parse_bar`).
FILE_BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
#: Prefix of the line a text bar writes when it closes (an early-stopped bar is no longer running).
END_MARK = "[end] "


class _FileTqdm(_text_tqdm):
    """A text bar writing to its own appended file, closed with the bar; on closing it writes
    ``[end] <desc>`` so the runner knows the bar stopped (early stopping included)."""

    def __init__(self, *args: Any, path: str, **kwargs: Any):
        self._fh = open(path, "a", buffering=1)
        kwargs.setdefault("mininterval", 2.0)
        kwargs.pop("ncols", None)
        kwargs.pop("file", None)
        kwargs.setdefault("bar_format", FILE_BAR_FORMAT)
        super().__init__(*args, file=self._fh, ascii=True, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if not self._fh.closed:
                self._fh.write(f"\n{END_MARK}{self.desc}\n")
                self._fh.close()


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` (same arguments), or a text bar into ``$MAMMO_PROGRESS_FILE`` when set
    (and the bar is not disabled)."""
    path = os.environ.get(ENV_PROGRESS_FILE)
    if path and not kwargs.get("disable", False):
        return _FileTqdm(*args, path=path, **kwargs)
    return _auto_tqdm(*args, **kwargs)


__all__ = ["tqdm", "ENV_PROGRESS_FILE", "FILE_BAR_FORMAT", "END_MARK"]
