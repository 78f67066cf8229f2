"""The ClientApp: local training under a privacy mechanism, and local evaluation."""
