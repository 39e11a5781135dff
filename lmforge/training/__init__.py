"""lmforge.training."""
