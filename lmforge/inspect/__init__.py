"""lmforge.inspect."""
