"""Data sources: each returns raw frames and knows nothing about models.

Table sources return a :class:`TableData`; the DataModules turn them into tensors.
"""

from clm_torch.data.sources.tables import CSVSource, FrameSource, SyntheticSource, TableData, TelcoSource

__all__ = ["CSVSource", "FrameSource", "SyntheticSource", "TableData", "TelcoSource"]
