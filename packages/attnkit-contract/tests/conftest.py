import sys
from pathlib import Path

# badspecs.py sits beside the tests; pytester runs in a temporary directory and imports it too.
sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture(autouse=True)
def _full_contract_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own tests count the checks of the full profile, whatever profile the
    surrounding run (``nox -s tests`` runs the quick one) uses for installed specs."""
    monkeypatch.setenv("ATTNKIT_CONTRACT_PROFILE", "full")
