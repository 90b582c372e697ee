"""Data pipeline: shard writing, webdataset reading, the synthetic shapes set."""
