"""Data sets: their table, acquiring and verifying their files, reading them into batches."""
