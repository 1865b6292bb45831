"""The web dashboard under /ui (see api/ui/app.py)."""
