"""lmforge.evaluate."""
