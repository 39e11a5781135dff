"""Decoding: pure sampling functions (sampling.py) and the step-by-step loop (generate.py)."""
