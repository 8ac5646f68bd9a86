import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _results_outside_the_checkout(tmp_path_factory):
    """Test runs write their results to a temporary directory, not the user's results/."""
    if "LAB_RESULTS" not in os.environ:
        os.environ["LAB_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    yield
