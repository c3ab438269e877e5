"""Shared by the tests and the doctests: every test starts with the package's own methods only.

A method from outside the package registers itself when its module is imported (that is all a
plugin needs), and stays registered for the rest of the process. pytest imports every module of
``paper_code`` to collect its doctests, ``paper_code/examples/centre_prior.py`` included, so without
this the example plugin would join every table computed in the test process. Before and after each
test, methods registered from outside the package are dropped and their modules forgotten, so that
a test importing a plugin registers it afresh.
"""

from __future__ import annotations

import sys

import pytest

from paper_code.methods import METHODS


def _drop_plugins() -> None:
    for name, spec in list(METHODS.items()):
        if not spec.builtin:
            del METHODS[name]
            module = spec.fn.__module__  # a doctest's function says its docstring's module
            if module.startswith("paper_code.examples.") or not module.startswith("paper_code."):
                sys.modules.pop(module, None)


def pytest_collection_finish(session: pytest.Session) -> None:
    _drop_plugins()


@pytest.fixture(autouse=True)
def built_in_methods_only():
    """The package's own methods only, during the test and after it."""
    _drop_plugins()
    yield
    _drop_plugins()
