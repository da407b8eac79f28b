"""Milvus: connecting, the collection schema, column-wise upserts, search, and the shared Lite server."""
