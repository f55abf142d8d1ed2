"""Shared fixtures: where the real photos are, and one prepared default model pack per run.

Photos come from ``../shared/faces`` when it is present (tests needing it skip with a
reason otherwise) and from PyPI packages that ship real face photos (matplotlib's
grace_hopper.jpg, scikit-image's astronaut), so a fresh clone still runs the real models.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", ROOT.parent / "shared"))
SHARED_FACES = SHARED / "faces"
SHARED_MODELS = SHARED / "models"


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that falls back to the default data directory (``$XDG_DATA_HOME/facegate``)
    must write under the test's tmp_path, never into the developer's home."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def require_shared_faces() -> Path:
    if not SHARED_FACES.is_dir():
        pytest.skip(f"needs the shared face photos at {SHARED_FACES} (absent on this machine)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    return require_shared_faces()


def grace_hopper_path() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def astronaut_rgb() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, :3])  # type: ignore[no-untyped-call]


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def grace_hopper_jpeg() -> bytes:
    return grace_hopper_path().read_bytes()


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    return jpeg_bytes(astronaut_rgb())


@pytest.fixture(scope="session")
def packs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A default model pack converted once for the whole test run (seconds)."""
    from service.models.pack import ensure_default_pack

    path = tmp_path_factory.mktemp("packs")
    ensure_default_pack(path)
    yield path


@pytest.fixture(scope="session")
def analyzer(packs_dir: Path):  # type: ignore[no-untyped-def]
    from service.config import Settings
    from service.pipeline.dlib_analyzer import build_default_analyzer

    return build_default_analyzer(Settings(model_dir=packs_dir, data_dir=packs_dir.parent))
