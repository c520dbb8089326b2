"""The command-line tools, each ``python -m core.cli.<name>``: argparse -> config -> one call into ``core``.

Modules:

- ``run_server.py``: serve blocks of a converted model to a swarm.
- ``run_dht.py``: a standalone, persistent bootstrap peer for a swarm.
- ``convert_model.py``: convert a checkpoint into Blossom's per-block format.
- ``train_prompts.py``: train prompts for a model served by a swarm; Ctrl-C stops and saves.
- ``swarm_status.py``: which servers hold which blocks of each model.
- ``demo.py``: a private swarm on this machine serving SmolLM2-135M, answering a prompt.
- ``common.py``: pieces the tools share: logging set-up, signal handling, error exits.
"""
