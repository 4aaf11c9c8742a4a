"""The I/O shell: client and backend connections, pooling, timers. Only this package,
``server.py``, ``worker.py`` and ``supervisor.py`` touch sockets."""
