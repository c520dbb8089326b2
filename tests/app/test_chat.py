"""The chat tab against a real local swarm: streamed tokens equal to transformers' greedy output, stop, errors."""
from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import Qt
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.bridges.chat import build_input_ids
from app.settings import JOIN


def joined_window(make_window, app_swarm, tiny_checkpoints, qtbot, **changes):
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), swarm_mode=JOIN, initial_peers=list(app_swarm.initial_peers),
                         temperature=0.0, **changes)
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.chat.target is not None, timeout=60_000)
    return window


def send(qtbot, window, text: str) -> None:
    window.chat.input.setPlainText(text)
    qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)


@pytest.mark.slow
def test_chat_streams_the_swarms_greedy_reply(qtbot, make_window, app_swarm, tiny_checkpoints) -> None:
    original, converted = tiny_checkpoints["llama"]
    window = joined_window(make_window, app_swarm, tiny_checkpoints, qtbot, max_new_tokens=12)
    pieces: list[str] = []
    window.controller.chat.token_received.connect(pieces.append)
    with qtbot.waitSignal(window.controller.chat.reply_finished, timeout=120_000) as finished:
        send(qtbot, window, "hello blossom")
    reply, stopped = finished.args[0].text, finished.args[0].stopped
    assert not stopped and reply and "".join(pieces) == reply
    assert len(pieces) >= 2  # streamed piece by piece, not in one go

    tokenizer = AutoTokenizer.from_pretrained(converted)
    input_ids = build_input_ids(tokenizer, [{"role": "user", "content": "hello blossom"}], 12)
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    with torch.no_grad():
        expected = local.generate(input_ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=2)
    assert reply == tokenizer.decode(expected[0, input_ids.shape[1]:], skip_special_tokens=True)

    turns = window.conversation.turns
    assert [turn.role for turn in turns] == ["user", "assistant"] and turns[1].content == reply
    assert "hello blossom" in window.chat.transcript_text() and reply.strip()[:10] in window.chat.transcript_text()
    assert window.chat.send_button.isEnabled() and not window.chat.stop_button.isEnabled()
    assert window.chat.status.text().startswith("Connected to tiny-llama")

    qtbot.mouseClick(window.chat.new_button, Qt.MouseButton.LeftButton)
    assert window.conversation.turns == []


@pytest.mark.slow
def test_stop_ends_a_reply_early_and_errors_show_in_the_chat(qtbot, make_window, app_swarm, tiny_checkpoints,
                                                              tmp_path) -> None:
    window = joined_window(make_window, app_swarm, tiny_checkpoints, qtbot, max_new_tokens=200)
    bridge = window.controller.chat
    with qtbot.waitSignal(bridge.reply_finished, timeout=120_000) as finished:
        with qtbot.waitSignal(bridge.token_received, timeout=120_000):
            send(qtbot, window, "the quick brown fox")
        assert window.chat.stop_button.isEnabled()
        qtbot.mouseClick(window.chat.stop_button, Qt.MouseButton.LeftButton)
    reply, stopped = finished.args[0].text, finished.args[0].stopped
    assert stopped and window.conversation.turns[-1].stopped
    assert len(window.controller.chat._tokenizer(reply).input_ids) < 200
    assert "(stopped)" in window.chat.transcript_text()

    window.chat.offer_prompts(str(tmp_path / "missing.safetensors"), use=True)  # a prompts file that is gone
    with qtbot.waitSignal(bridge.reply_failed, timeout=60_000) as failed:
        send(qtbot, window, "hello")
    assert "does not exist" in failed.args[0]
    assert window.conversation.turns[-1].role == "error"
    assert "Could not answer" in window.chat.transcript_text() and "does not exist" in window.chat.transcript_text()
    assert window.chat.send_button.isEnabled()
