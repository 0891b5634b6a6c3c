"""Data layer: schema, cleaning, encoding, event logs, sources and DataModules."""

from clm_torch.data.schema import SchemaError, TableSchema, infer_schema, read_table

__all__ = ["SchemaError", "TableSchema", "infer_schema", "read_table"]
