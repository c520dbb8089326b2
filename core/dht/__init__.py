"""The swarm's DHT: the key schema, signed records of who serves which blocks, and the nodes holding them.

Modules:

- ``schema.py``: the key schema and the records a server announces (:class:`ServerInfo`, :class:`ModelInfo`).
- ``records.py``: declaring and reading block spans and served models, each look-up bounded in time.
- ``identity.py``: a server's RSA identity, whose key signs its records so no peer can forge them.
- ``node.py``: starting and stopping DHT nodes that sign their own records and check others'.
- ``swarm_status.py``: what a swarm looks like now: servers per block of each model, and what is uncovered.
"""
