"""Config checking: the schema of every config group and key, its generated reference,
the
checks before a run starts (types, ranges, combinations, values)."""
