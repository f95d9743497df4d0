"""manifest: data_manifest.csv pins the shipped CBIS-DDSM CSVs; generate/verify round trips."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mammo_lib.utils.files import write_csv
from mammo_lib.data.manifest import MANIFEST_COLUMNS, generate_manifest, read_manifest, sha256_file, verify_manifest
from mammo_lib.data.records import DataError

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "data_manifest.csv"
CBIS = ROOT / "tests" / "fixtures" / "cbis_ddsm"
CBIS_FILES = ["mass_case_description_test_set.csv", "mass_case_description_train_set.csv"]

# NIST FIPS 180-2 test vectors: (content, sha256)
SHA_VECTORS = [
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
]


def _tamper(root: Path, name: str, how: str) -> None:
    path = root / name
    data = bytearray(path.read_bytes())
    if how == "flip_byte":        # same size, different content
        data[1000] ^= 0x01
    elif how == "append":
        data += b"\n"
    path.write_bytes(bytes(data))


# (name, action on a copy of the fixtures, expected report lists, reason fragment)
VERIFY_CASES = [
    ("pristine", None, {"ok": CBIS_FILES}, None),
    ("flip_byte", ("flip_byte", CBIS_FILES[1]), {"ok": CBIS_FILES[:1], "altered": CBIS_FILES[1:]}, "sha256 differs"),
    ("append", ("append", CBIS_FILES[0]), {"ok": CBIS_FILES[1:], "altered": CBIS_FILES[:1]}, "size 217022 != 217021"),
    ("removed", ("remove", CBIS_FILES[0]), {"ok": CBIS_FILES[1:], "missing": CBIS_FILES[:1]}, None),
]


@pytest.mark.parametrize("content,digest", SHA_VECTORS)
def test_sha256_vectors(tmp_path, content, digest):
    path = tmp_path / "f"
    path.write_bytes(content)
    assert sha256_file(path) == digest == sha256_file(path, chunk_size=1)


def test_chunked_equals_one_shot(tmp_path):
    data = bytes(range(256)) * 41
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_shipped_manifest_layout():
    df = read_manifest(MANIFEST)
    assert list(pd.read_csv(MANIFEST, nrows=0).columns) == MANIFEST_COLUMNS
    assert set(df["dataset"]) == {"CBIS-DDSM", "BCDR-D01", "BCDR-F01", "phantom"}
    cbis = df[df["dataset"] == "CBIS-DDSM"]
    assert sorted(cbis["relative_path"]) == CBIS_FILES and (cbis["licence"] == "CC BY 3.0").all()
    assert (df.loc[df["dataset"].str.startswith("BCDR"), "sha256"] == "").all()
    assert (df.loc[df["dataset"] == "phantom", "relative_path"] == "").all()


@pytest.mark.parametrize("name,action,expected,reason", VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES])
def test_verify_fixtures(tmp_path, name, action, expected, reason):
    root = tmp_path / "cbis"
    shutil.copytree(CBIS, root)
    for p in root.iterdir():
        p.chmod(0o644)
    if action is not None:
        how, target = action
        if how == "remove":
            (root / target).unlink()
        else:
            _tamper(root, target, how)
    report = verify_manifest(MANIFEST, root, "CBIS-DDSM")
    got = {k: sorted(getattr(report, k)) for k in ("ok", "missing", "altered", "unchecked")}
    assert got == {k: expected.get(k, []) for k in got}
    if name == "pristine":
        assert report.is_ok
        report.raise_if_bad()
        return
    with pytest.raises(DataError) as info:
        report.raise_if_bad()
    bad = (expected.get("missing") or expected["altered"])[0]
    assert bad in str(info.value) and info.value.file == str(MANIFEST)
    if reason:
        assert reason in report.reasons[bad]


def test_verify_shipped_fixtures_in_place():
    report = verify_manifest(MANIFEST, CBIS, "CBIS-DDSM")
    assert sorted(report.ok) == CBIS_FILES and report.is_ok


def test_unchecked_without_sha(tmp_path):
    (tmp_path / "bcdr_d01_outlines.csv").write_text("x\n")
    report = verify_manifest(MANIFEST, tmp_path, "BCDR-D01")
    assert report.unchecked == ["bcdr_d01_outlines.csv"] and report.missing == ["bcdr_d01_img.csv"]
    with pytest.raises(ValueError, match="not in"):
        verify_manifest(MANIFEST, tmp_path, "INbreast")


def test_generate_then_verify(tmp_path):
    root = tmp_path / "lab"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"abc")
    (root / "sub" / "a.dcm").write_bytes(b"")
    out = tmp_path / "manifest.csv"
    write_csv(out, pd.DataFrame([{"dataset": "other", "relative_path": "x", "size_bytes": "1", "sha256": "",
                                  "source": "s", "licence": "l", "notes": ""}], columns=MANIFEST_COLUMNS))
    df = generate_manifest(root, "lab", "our PACS", "internal", out, progress=False)
    assert list(df["relative_path"]) == ["b.txt", "sub/a.dcm"]
    assert list(df["size_bytes"]) == ["3", "0"]
    assert list(df["sha256"]) == [SHA_VECTORS[0][1], SHA_VECTORS[1][1]]
    written = read_manifest(out)
    assert list(written["dataset"]) == ["other", "lab", "lab"]        # other datasets kept
    generate_manifest(root, "lab", "our PACS", "internal", out, progress=False)
    assert len(read_manifest(out)) == 3                                  # regenerating replaces, not appends
    assert verify_manifest(out, root, "lab").ok == ["b.txt", "sub/a.dcm"]
    inside = root / "manifest.csv"
    assert "manifest.csv" not in list(generate_manifest(root, "lab", "s", "l", inside, progress=False)["relative_path"])
    assert not list(tmp_path.glob("*.tmp")) and not list(root.glob(".*.tmp"))


def test_generate_manifest_bad_root(tmp_path):
    with pytest.raises(DataError, match="data root folder not found"):
        generate_manifest(tmp_path / "none", "x", "s", "l")
