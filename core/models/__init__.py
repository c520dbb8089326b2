"""Model families: one package per architecture (``bloom/``, ``llama/``) and the registry that finds them.

- ``registry.py``: :class:`ModelFamily`, :func:`register_family`, :func:`get_family`.
- ``masks.py``: the additive causal mask shared by block spans.
- ``base.py``: :class:`DistributedModelForCausalLM`, the client model every family builds on.
- ``<family>/block.py``: the server-side span of consecutive blocks.
- ``<family>/model.py``: the family's distributed config and client model classes.
"""
