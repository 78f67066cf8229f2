"""What a client (and the server's evaluation) computes, by concept.

* :mod:`tasks.data`: the dataset registry and its sources, public bounds, partitioning,
  the files a participant's node reads.
* :mod:`tasks.models`: the model registry, the zoo and the functional mechanism's models.
* :mod:`tasks.training`: training loops and each privacy mode's local training (the modes
  themselves, their properties and their mathematics live in :mod:`privacy`).
* :mod:`tasks.participants`: the simulation of unreliable participants.

Nothing here imports Flower; each package's ``__init__`` imports its plug-ins.
"""
