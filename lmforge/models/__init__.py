"""Model families: one file each (gpt.py, ...), on the shared bases in base.py."""
