"""Flower's processes, started, watched and stopped by PID; nothing else of fedpriv imported.

=================  ==========================================================================
``procs``          ports, environment (own ``FLWR_HOME``), stopping process trees, the slim
                   app copy ``flwr run`` packs, a simulation SuperLink shared by a sweep
``owned``          :class:`~experiments.processes.owned.OwnedProcess` (a long-running process
                   owned by PID) and ``Tuning``
``launcher``       the ``flwr`` CLI connection and ``LocalSimulation`` (the simulation
                   engine); re-exports ``procs`` and ``owned``
``superlink``      the operator's ``flower-superlink`` (TLS, node authentication); register
                   and list SuperNodes
``supernode``      a participant's ``flower-supernode`` and its node config (``NodeSpec``)
``proxy``          nginx in front of the SuperLink: participants reach the Fleet API only
``fab_guard``      Flower's SuperExec that launches approved apps (by FAB hash) only
``certs``          development CA, server certificate and node keys
=================  ==========================================================================

The commands over these modules are ``python -m experiments.deploy`` and
``python -m experiments.certs``; ``experiments.local_deployment`` puts them all on one machine.
"""
