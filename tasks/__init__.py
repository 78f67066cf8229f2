"""Datasets, partitioning, models and plain training loops (no Flower, no privacy)."""
