"""affcons tests. A package, so that ``tests.mongo_server`` is importable as a pytest plugin and pytest puts the
repository root (holding ``affcons``) on ``sys.path`` under its default import mode."""

import pytest

pytest.register_assert_rewrite("tests.mongo_server")  # a plugin module that test modules also import helpers from
