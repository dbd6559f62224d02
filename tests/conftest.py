import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fakecifar  # noqa: E402


@pytest.fixture(params=fakecifar.ENCODINGS)
def cifar_any_encoding(tmp_path, request):
    """(folder, raw) for a tiny CIFAR-10 in each encoding a reader must accept."""
    folder = tmp_path / "cifar-10-batches-py"
    return folder, fakecifar.write(folder, request.param)


@pytest.fixture
def cifar_dir(tmp_path):
    """(folder, raw) for a tiny CIFAR-10 in the official encoding."""
    folder = tmp_path / "cifar-10-batches-py"
    return folder, fakecifar.write(folder, "py2")
