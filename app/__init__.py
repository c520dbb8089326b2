"""Blossom's desktop node manager (PySide6): serve blocks from a worker process, pause from the tray, chat, tune.

- ``__main__.py``: ``python -m app`` / ``blossom``; the terminal demo when there is no display
- ``application.py``: QApplication bootstrap; ``app_controller.py``: :class:`AppController`, the app's logic
- ``settings.py``: :class:`AppSettings` kept in QSettings, and the :class:`ServeRequest` they imply
- ``swarms.py``: known swarms to join (``resources/swarms.json``, imported files, join links, saved peers)
- ``reachability.py``: how others reach this PC's server, in words for the dashboard and the tray
- ``worker/``: the block server's worker process and its typed messages
- ``bridges/``: QObjects running ``core``'s client (chat, tuning, swarm status) off the GUI thread
- ``widgets/``: the window, its tabs and the tray; ``conversation.py``: the chat's turns
- ``icons.py``, ``theme.py``, ``formatting.py``: drawing, look and text helpers
"""
