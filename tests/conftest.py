"""pytest setup for lnorm: makes the helper modules in tests/ (reference.py, checks.py) importable
and provides shared fixtures."""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import lnorm  # noqa: E402  (a missing or broken build must fail loudly, not skip)


@pytest.fixture
def restore_threads():
    """Restore lnorm's thread count after a test that changes it."""
    saved = lnorm.get_num_threads()
    yield saved
    lnorm.set_num_threads(saved)
