"""Shared fixtures; each family lives in its own module."""

pytest_plugins = [
    "tests.support.models",
    "tests.support.milvus",
    "tests.support.redis",
    "tests.support.workers",
]
