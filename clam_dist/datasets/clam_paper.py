"""Loaders for the seven ClAM-paper data sets bundled with the package.

Files are as the ClAM authors distribute them (see clam_paper/README.md). The label is
always the last column and is returned separately: it is for external metrics only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

# name -> (file, n, d, k); n/d/k are checked on load so a damaged file is caught early.
CLAM_PAPER_FILES: dict[str, tuple[str, int, int, int]] = {
    "zoo": ("zoo.csv", 101, 16, 7),
    "ecoli": ("ecoli.data", 336, 7, 8),
    "movement_libras": ("movement_libras.csv", 360, 90, 15),
    "mp_exp": ("mp_exp.txt", 1080, 77, 8),
    "ctg": ("ctg.txt", 2126, 21, 10),
    "segment": ("segment.dat", 2310, 19, 7),
    "yale": ("Yale.mat", 165, 1024, 15),
}
CLAM_PAPER_DATASETS: tuple[str, ...] = tuple(CLAM_PAPER_FILES)


def data_dir() -> Path:
    return Path(str(resources.files("clam_dist.datasets") / "clam_paper"))


def _encode_labels(raw: np.ndarray) -> np.ndarray:
    _, codes = np.unique(raw, return_inverse=True)
    return codes.astype(np.int64)


def _read_text_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Comma-, tab- or space-separated rows; last field is the label (maybe a string)."""
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(",", " ").split()
        rows.append(fields)
        if len(fields) != len(rows[0]):
            raise ValueError(
                f"{path.name}: line {line_no} has {len(fields)} fields, expected {len(rows[0])}"
            )
    features = np.array([r[:-1] for r in rows], dtype=np.float64)
    return features, _encode_labels(np.array([r[-1] for r in rows]))


def load_clam_paper(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (features float64 (n, d), labels int64 (n,)) of a bundled data set.

    Features are raw (not standardised); ``standardize`` them as the paper does.
    """
    if name not in CLAM_PAPER_FILES:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {', '.join(CLAM_PAPER_DATASETS)}"
        )
    file_name, n, d, k = CLAM_PAPER_FILES[name]
    path = data_dir() / file_name
    if file_name.endswith(".mat"):
        from scipy.io import loadmat

        mat = loadmat(path)
        x = np.asarray(mat["X"], dtype=np.float64)
        y = _encode_labels(np.asarray(mat["Y"]).ravel())
    else:
        x, y = _read_text_table(path)
    if x.shape != (n, d) or len(np.unique(y)) != k:
        raise ValueError(
            f"{file_name}: expected {n} rows x {d} features and {k} classes, "
            f"found {x.shape[0]} x {x.shape[1]} and {len(np.unique(y))} classes"
        )
    return x, y


def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature; constant features become 0 (not NaN)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)
