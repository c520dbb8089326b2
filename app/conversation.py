"""A chat conversation as data: the turns so far and the reply being streamed (no Qt widgets, no torch)."""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from app.bridges.chat import ChatBridge, ChatReply, Sampling


@dataclass
class Turn:
    """One message: ``role`` is ``user``, ``assistant`` or ``error`` (errors are shown, never sent to the model)."""

    role: str
    content: str
    stopped: bool = False


class Conversation(QObject):
    """The chat tab's turns; ``changed`` after every edit, ``streaming_changed`` when a reply starts or ends.

    Attached to a :class:`ChatBridge`, :meth:`send` asks it for the next reply and the reply's
    tokens, end or error land here.
    """

    changed = Signal()
    streaming_changed = Signal(bool)

    def __init__(self, bridge: ChatBridge | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.turns: list[Turn] = []
        self.streaming = False
        self.bridge = bridge
        if bridge is not None:
            bridge.reply_started.connect(self.begin_reply)
            bridge.token_received.connect(self.append_to_reply)
            bridge.reply_finished.connect(self.finish_reply)
            bridge.reply_failed.connect(self.fail_reply)

    def send(self, text: str, sampling: Sampling) -> bool:
        """Add the user's message and ask for a reply; False when busy (nothing is added) or empty."""
        text = text.strip()
        if not text or self.bridge is None or self.bridge.busy:
            return False
        self.add_user(text)
        self.bridge.send(self.messages(), sampling)
        return True

    def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()

    def new(self) -> None:
        """Start over (a reply being streamed is stopped first)."""
        self.stop()
        self.clear()

    def clear(self) -> None:
        self.turns.clear()
        self._set_streaming(False)
        self.changed.emit()

    def add_user(self, text: str) -> None:
        self.turns.append(Turn("user", text))
        self.changed.emit()

    def begin_reply(self) -> None:
        self.turns.append(Turn("assistant", ""))
        self._set_streaming(True)
        self.changed.emit()

    def append_to_reply(self, text: str) -> None:
        if self.streaming and self.turns and self.turns[-1].role == "assistant":
            self.turns[-1].content += text
            self.changed.emit()

    def finish_reply(self, reply: ChatReply) -> None:
        if self.turns and self.turns[-1].role == "assistant" and self.streaming:
            self.turns[-1].content = reply.text or self.turns[-1].content
            self.turns[-1].stopped = reply.stopped
        self._set_streaming(False)
        self.changed.emit()

    def fail_reply(self, reason: str) -> None:
        if self.streaming and self.turns and self.turns[-1].role == "assistant" and not self.turns[-1].content:
            self.turns.pop()
        self.turns.append(Turn("error", reason))
        self._set_streaming(False)
        self.changed.emit()

    def messages(self) -> list[dict[str, str]]:
        """The turns to send to the model (user and assistant ones with text)."""
        return [{"role": turn.role, "content": turn.content} for turn in self.turns
                if turn.role in ("user", "assistant") and turn.content]

    def _set_streaming(self, streaming: bool) -> None:
        if streaming != self.streaming:
            self.streaming = streaming
            self.streaming_changed.emit(streaming)
