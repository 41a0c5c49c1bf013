from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "datasets"


@pytest.fixture
def mirror() -> Path:
    if not (MIRROR / "mnist").is_dir():
        pytest.skip(f"no dataset mirror at {MIRROR}")
    return MIRROR


@pytest.fixture
def toy_images():
    """A small, learnable image set: the class is written into the pixel rows."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 10
    x = torch.randint(0, 60, (300, 1, 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):
        x[y == c, :, 2 * c + 4 : 2 * c + 6, 4:24] = 255
    return x, y
