"""Data the project makes itself (no downloads): the procedurally generated shapes dataset."""
