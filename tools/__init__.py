"""Data-making tools with thin command lines (outside the training library's core)."""
