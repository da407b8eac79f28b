"""Shared fixtures; each family lives in its own module."""

pytest_plugins = [
    "tests.model_fixtures",
    "tests.milvus_fixtures",
    "tests.redis_fixtures",
    "tests.worker_fixtures",
]
