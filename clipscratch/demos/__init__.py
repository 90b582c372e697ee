"""Demonstrations plugged into the generic trainer by their configs (configs/default.yaml: shapes)."""
