"""The window and its tabs, one per file; thin widgets that emit requests and show what they are told.

- ``main_window.py``: :class:`MainWindow`, the tabs, closing to the tray, wiring (``_connect_signals``)
- ``dashboard.py``: serving state, controls and counters, the log; ``hardware_panel.py``: hardware and recommendation
- ``chat.py``: the chat tab; ``tuning.py`` (+ ``loss_plot.py``): prompt tuning; ``swarm.py`` (+ ``coverage.py``): the swarm
- ``settings.py``: model, swarm and node settings (+ ``swarm_chooser.py``: known swarms, Join, import);
  ``tray.py``: the system tray icon and its menu
- ``common.py``: cards, stat tiles and buttons shared by the tabs

Widgets never import torch, transformers or hivemind.
"""
