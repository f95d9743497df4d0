"""Tests of mammo_lib.data.preprocess's worker pool: one thread per worker, largest inputs first, and
results identical bit for bit whatever the number of workers (docs/DECISIONS.md, "Preprocessing
workers").

Cases:

| case                              | input                                           | expected                                      |
|-----------------------------------|-------------------------------------------------|-----------------------------------------------|
| worker thread limits              | 2 workers started with worker_init             | BLAS/OpenMP pools and torch at 1 thread each   |
| submission order                  | files of 10, 30, 20, 30 bytes (+ a 5-byte mask on the first) | [1, 3, 2, 0]: largest first, ties in input order |
| missing file in the order         | image path that does not exist                  | size 0: submitted last, no error here          |
| workers 1 vs 2 on a CBIS tree     | phantom CBIS-DDSM DICOM tree (RLE), 6 cases     | images, masks bit-identical; index, exclusions, params byte-identical |
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mammo_lib.data.cbis_ddsm import load_cbis_ddsm
from mammo_lib.data.phantom import write_cbis_tree
from mammo_lib.data.preprocess import _submission_order, worker_init, preprocess
from mammo_lib.data.records import MassRecord


def _thread_counts(_: int) -> tuple[list[int], int]:
    import threadpoolctl
    import torch

    return [d["num_threads"] for d in threadpoolctl.threadpool_info()], torch.get_num_threads()


def test_worker_init_limits_threads_to_one() -> None:
    import torch  # loaded in the parent, as in the pipeline: workers inherit it by fork

    torch.get_num_threads()
    with ProcessPoolExecutor(max_workers=2, initializer=worker_init) as pool:
        for pools, torch_threads in pool.map(_thread_counts, range(2)):
            assert pools and all(n == 1 for n in pools)
            assert torch_threads == 1


def _record(i: int, image: Path, mask: Path | None) -> MassRecord:
    return MassRecord(case_id=f"c{i}", patient_id=f"p{i}", label=i % 2, image_path=str(image),
                      mask_path=None if mask is None else str(mask), source_file="x.csv", source_row=i + 2,
                      dataset="t", split="train")


def test_submission_order_largest_first(tmp_path: Path) -> None:
    recs = []
    for i, n in enumerate((10, 30, 20, 30)):
        img = tmp_path / f"i{i}.dcm"
        img.write_bytes(b"x" * n)
        mask = None
        if i == 0:
            mask = tmp_path / "m0.dcm"
            mask.write_bytes(b"x" * 5)
        recs.append(_record(i, img, mask))
    assert _submission_order(recs, [0, 1, 2, 3]) == [1, 3, 2, 0]
    assert _submission_order(recs, [2, 0]) == [2, 0]
    recs.append(_record(4, tmp_path / "missing.dcm", None))
    assert _submission_order(recs, [4, 0]) == [0, 4]


@pytest.fixture(scope="module")
def cbis_records(tmp_path_factory: pytest.TempPathFactory) -> list[MassRecord]:
    root = write_cbis_tree(tmp_path_factory.mktemp("cbis"), n_cases=6)
    csvs = sorted(root.glob("mass_case_description_*_set.csv"))
    return load_cbis_ddsm(csvs, dicom_root=root, progress=False).records


def test_workers_1_and_2_identical_on_cbis_tree(tmp_path: Path, cbis_records: list[MassRecord]) -> None:
    kw = dict(variant="mass_centred", size=48, min_context=64, on_error="raise", progress=False)
    one = preprocess(cbis_records, tmp_path / "w1", workers=1, **kw)
    two = preprocess(cbis_records, tmp_path / "w2", workers=2, **kw)
    assert len(one) == len(cbis_records) == 6
    assert one.images.dtype == np.float32 and one.images.tobytes() == two.images.tobytes()
    assert one.masks.tobytes() == two.masks.tobytes()
    (d1,), (d2,) = (list((tmp_path / w).iterdir()) for w in ("w1", "w2"))
    assert d1.name == d2.name  # same cache key
    for f in ("index.csv", "exclusions.csv", "params.json"):
        assert (d1 / f).read_bytes() == (d2 / f).read_bytes(), f
