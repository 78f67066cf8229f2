"""Hydra entry points: compose conf/, launch federations through Flower, report and plot."""
