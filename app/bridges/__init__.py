"""QObjects that run ``core``'s heavy work (torch, hivemind) off the GUI thread and report with signals.

- ``tasks.py``: :class:`BackgroundCall`, one function run in a thread, its result or error as a signal
- ``job.py``: :class:`JobBridge`, the base of the chat and tuning bridges: one job at a time in a thread,
  ``busy_changed`` / ``status_changed`` / ``finished`` / ``failed``, ``stop()`` and ``shutdown()``
- ``model.py``: :func:`prepare_model`, the bundled demo model converted on first use, or a chosen one
- ``chat.py``: :class:`ChatBridge`, streamed generation through the swarm (replies as :class:`ChatReply`)
- ``tuning.py``: :class:`TuningBridge`, prompt tuning with step reports, stop and save
- ``swarm.py``: :class:`SwarmBridge`, the swarm's servers and coverage, refreshed periodically

Widgets import these modules, never torch, transformers or hivemind: heavy imports happen inside
the threads.
"""
