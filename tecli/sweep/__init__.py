"""Sweeps: files, plans against the database, executors and their display."""
