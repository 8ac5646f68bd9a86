import os

import pytest

# A developer's ~/.config/lab/config.toml (their kernels, accel, cache) must not change what the tests
# check: the tests read no config file unless one sets LAB_CONFIG itself.
os.environ.setdefault("LAB_CONFIG", "/dev/null")


# Tests that need the kernel built from source run last: the session starts that build at idle
# priority (tests/integration/conftest.py), so it runs in the CPU time the guests of every other test
# leave free instead of stalling the session for 12 minutes at the start.
BUILT_KERNEL_FILES = ("test_kernel_build.py", "test_built_kernel_scenarios.py", "test_series_demos.py")


def _order(item) -> int:
    path = str(item.fspath)
    if "tests/integration" not in path:
        return 0  # pure logic first: seconds, and a broken build shows before any guest boots
    return 2 if path.endswith(BUILT_KERNEL_FILES) else 1


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_order)  # stable: the order inside each group is unchanged


@pytest.fixture(scope="session", autouse=True)
def _results_outside_the_checkout(tmp_path_factory):
    """Test runs write their results to a temporary directory, not the user's results/."""
    if "LAB_RESULTS" not in os.environ:
        os.environ["LAB_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    yield
