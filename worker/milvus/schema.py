"""An embedq collection: its fields and their limits, its index, and the model record it carries."""

from __future__ import annotations

from pymilvus import CollectionSchema, DataType, MilvusClient

from producer.limits import ID_MAX_BYTES, TEXT_MAX_BYTES

ID_FIELD, VECTOR_FIELD, TEXT_FIELD, METADATA_FIELD = "id", "vector", "text", "metadata"
MODEL_PROPERTY = "embedq.model"
"""Collection property holding ``{"model_id": ..., "dim": ...}`` as JSON."""
METRIC = "COSINE"
HNSW_PARAMS: dict[str, int] = {"M": 16, "efConstruction": 200}
MAX_TOP_K = 16384  # Milvus' limit on topk
SEARCHABLE_FIELDS = (TEXT_FIELD, METADATA_FIELD)


def collection_schema(model_id: str, dim: int) -> CollectionSchema:
    """Return the schema of an embedq collection: string id, vector, text, JSON metadata."""
    schema = MilvusClient.create_schema(
        auto_id=False,
        enable_dynamic_field=False,
        description=f"embedq: vectors of model {model_id} (dim {dim})",
    )
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(TEXT_FIELD, DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
    schema.add_field(METADATA_FIELD, DataType.JSON)
    return schema
