"""Data: document sources, the LM, token rows, hooks, the Parquet activation cache and the streaming source."""
