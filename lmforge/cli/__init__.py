"""The `lmforge` command line: one module per verb, built into one parser by `main.py`."""
