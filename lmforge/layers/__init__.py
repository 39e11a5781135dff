"""lmforge.layers."""
