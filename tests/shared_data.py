"""Where the shared workload data lives, and how tests that need it skip without it.

    from tests.shared_data import SHARED_DATA_DIR, requires_shared_data

    @requires_shared_data          # or: pytestmark = requires_shared_data
    def test_x(): ...

On a fresh clone there is no ../shared/data: such tests skip with a reason naming the path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA_DIR.is_dir(), reason=f"../shared/data not found: {SHARED_DATA_DIR}"
)


@pytest.fixture
def shared_data_dir() -> Path:
    """SHARED_DATA_DIR, or a skip when it is absent (import this fixture into the test module)."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR
