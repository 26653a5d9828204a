import os
import sys
from pathlib import Path

# MuJoCo picks its GL backend at first import (headless: egl or osmesa; .ci/sim-setup.sh checks which).
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
