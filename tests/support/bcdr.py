"""A tiny BCDR folder (TIFF images and an outlines CSV) for the loader and CLI tests."""
from pathlib import Path

import numpy as np

BCDR_HEADER = ("patient_id,study_id,series,lesion_id,segmentation_id,image_view,image_filename,lw_x_points,"
               "lw_y_points,mammography_type,mammography_nodule,mammography_calcification,"
               "mammography_microcalcification,mammography_axillary_adenopathy,"
               "mammography_architectural_distortion,mammography_stroma_distortion,age,density,classification")


def write_bcdr_folder(folder: Path, name: str, n: int, seed: int) -> None:
    import tifffile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [BCDR_HEADER]
    for i in range(n):
        rel = f"patient_{i}/study_{i}/img_{i}_{i}_1_LCC.tif"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / rel, rng.integers(0, 4000, (300, 240), dtype=np.uint16))
        cx, cy, r = 120, 150, 20 + i
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        xs = " ".join(str(int(cx + r * np.cos(a))) for a in t)
        ys = " ".join(str(int(cy + r * np.sin(a))) for a in t)
        cls = " Benign" if i % 2 == 0 else " Malign"
        lines.append(f"{i},{i},1,{i},{i},2, {rel}, {xs}, {ys},1,1,0,0,0,0,0,60,2,{cls}")
    (folder / name).write_text("\n".join(lines) + "\n")
