"""Typed exceptions for bad input and unavailable resources.

Every error carries a message a person can act on: what was wrong and what to do.
Errors raised on a server travel back to the client by their ``code`` and are re-raised
there with the same class (see :func:`error_from_code`).
"""
from __future__ import annotations


class BlossomError(Exception):
    """Base class of every error raised on purpose by Blossom."""

    code = "error"


class InvalidRequestError(BlossomError, ValueError):
    """A request had the wrong shape, dtype, metadata or values."""

    code = "invalid_request"


class UnknownBlocksError(InvalidRequestError):
    """A request named blocks this server does not serve."""

    code = "unknown_blocks"


class SequenceTooLongError(InvalidRequestError):
    """An inference session went past its ``max_length`` or the server's limit."""

    code = "sequence_too_long"


class ServerFullError(BlossomError):
    """The server's KV-cache budget cannot hold another session right now."""

    code = "server_full"


class SessionExpiredError(BlossomError):
    """A server closed an inference session that sent nothing for its idle time-out (its cache is freed);
    clients reopen it and replay its history."""

    code = "session_expired"


class MissingBlocksError(BlossomError):
    """No server in the swarm holds some of the blocks a model needs."""

    code = "missing_blocks"

    def __init__(self, blocks: list[int], prefix: str = "", waited: float | None = None) -> None:
        self.blocks = list(blocks)
        shown = _format_ranges(self.blocks)
        where = f" of '{prefix}'" if prefix else ""
        after = f" after waiting {waited:.0f} s" if waited is not None else ""
        super().__init__(
            f"no server in the swarm holds block(s) {shown}{where}{after}. Start a server for them "
            f"(blossom-server --model ... --block_indices {self.blocks[0]}:{self.blocks[-1] + 1}) "
            f"or check that --initial_peers points to the right swarm"
        )


class RemoteCallError(BlossomError):
    """A server could not be reached or failed while serving a request."""

    code = "remote_call_failed"


class SwarmJoinError(BlossomError):
    """A DHT node could not start or reach the swarm through its initial peers."""

    code = "swarm_join_failed"


class PortInUseError(SwarmJoinError):
    """The TCP port a node should listen on is taken by another program or another Blossom peer."""

    code = "port_in_use"

    def __init__(self, port: int, flag: str = "--port") -> None:
        super().__init__(f"port {port} is already in use on this machine (by another program, or another Blossom "
                         f"server or DHT peer): stop that one, or choose another {flag} (leave it out for a free one)")
        self.port = port


class LookupTimeoutError(BlossomError):
    """A DHT look-up got no answer in time."""

    code = "lookup_timeout"

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(
            f"the DHT did not answer a look-up of {what} within {timeout:g} s. Check that --initial_peers "
            f"name a live peer of the swarm and that this machine can reach it (firewall, network), then try again"
        )


class PromptsMismatchError(InvalidRequestError):
    """Saved prompts do not fit the model they are loaded into (other model, mode or length)."""

    code = "prompts_mismatch"


class DatasetError(BlossomError, ValueError):
    """A training dataset file is missing, empty or has records of an unsupported shape."""

    code = "dataset_error"


class ConversionError(BlossomError):
    """A checkpoint could not be converted or a converted model failed verification."""

    code = "conversion_failed"


class UnsupportedModelError(ConversionError):
    """The model's architecture has no registered family."""

    code = "unsupported_model"


def _format_ranges(indices: list[int]) -> str:
    """Format ``[0, 1, 2, 5]`` as ``'0-2, 5'``."""
    parts: list[str] = []
    for index in sorted(set(indices)):
        if parts and index == parts[-1][1] + 1:
            parts[-1] = (parts[-1][0], index)
        else:
            parts.append((index, index))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


_ERRORS_BY_CODE: dict[str, type[BlossomError]] = {
    cls.code: cls
    for cls in (
        BlossomError,
        InvalidRequestError,
        UnknownBlocksError,
        SequenceTooLongError,
        ServerFullError,
        SessionExpiredError,
        RemoteCallError,
        ConversionError,
        UnsupportedModelError,
        MissingBlocksError,
        LookupTimeoutError,
        SwarmJoinError,
        PromptsMismatchError,
        DatasetError,
    )
}


def error_from_code(code: str, message: str) -> BlossomError:
    """Rebuild an error received over the wire; unknown codes become :class:`RemoteCallError`."""
    cls = _ERRORS_BY_CODE.get(code, RemoteCallError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error
