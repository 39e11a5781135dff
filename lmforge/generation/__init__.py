"""lmforge.generation."""
