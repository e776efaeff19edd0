"""The addon harness of test_addon.py, for the other addon test modules."""

from test_addon import harness  # noqa: F401 (a fixture)
