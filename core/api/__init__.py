"""An OpenAI-compatible HTTP API in front of a swarm's model (``blossom-api``, :mod:`core.cli.api`).

- :mod:`core.api.app`: the FastAPI application, its routes and its error handlers.
- :mod:`core.api.schemas`: request bodies (validated) and response helpers.
- :mod:`core.api.engine`: prompts from messages, context and swarm checks, one ``generate`` per request.
- :mod:`core.api.runner`: generations in worker threads, bridged to the event loop; disconnects.
- :mod:`core.api.streaming`: the ``generate`` streamer: text as it comes, stop strings, early ends.
- :mod:`core.api.sampling`: reproducible ``seed`` with one global torch generator and many threads.
- :mod:`core.api.errors`: OpenAI's error format and the HTTP status of each Blossom error.

Importing this package needs FastAPI; ``import core`` does not import it.
"""
