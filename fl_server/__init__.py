"""The ServerApp: sampling, weighted aggregation, central evaluation and checkpoints."""
