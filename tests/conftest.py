import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "MNIST")


@pytest.fixture
def update_golden():
    return os.environ.get("GVA_UPDATE_GOLDEN") == "1"
