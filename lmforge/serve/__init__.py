"""`lmforge serve`: an OpenAI-compatible HTTP server over the decode engine (see app.py)."""
