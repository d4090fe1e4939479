"""The plugin-author fixtures of maitred.plugins.testing, for the tests in this folder.

(Plugin authors write ``pytest_plugins = ["maitred.plugins.testing"]`` in their root conftest;
that form is checked in test_testing_fixtures.py. Here the test modules import helpers from the
module too, so it is imported before pytest could rewrite it: importing the fixtures is the
warning-free way.)
"""

from maitred.plugins.testing import (  # noqa: F401
    maitred_broker,
    maitred_config,
    maitred_plugin_manager,
    maitred_serve,
)
