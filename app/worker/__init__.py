"""The block server's worker process and the typed messages it exchanges with the GUI.

- ``messages.py``: :class:`ServeRequest`, the commands, the events and their JSON-lines codec (no Qt, no torch)
- ``node.py``: :class:`WorkerNode`, the server's life inside the worker (start, pause, resume, stop, status),
  and :func:`server_config`, the one mapping of a :class:`ServeRequest` to ``core.config.ServerConfig``
- ``__main__.py``: ``python -m app.worker``, the process itself (stdin commands, stdout events)
- ``controller.py``: :class:`WorkerController`, the GUI-side QObject that starts the process and talks to it

The worker is started as a new program (QProcess), never forked from the GUI.
"""
