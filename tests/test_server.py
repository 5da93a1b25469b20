"""`steerkit serve` on the real default model, driven by the official openai client and plain HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerkit.profile import load_profile
from steerkit.shipped import shipped_profile

pytestmark = [pytest.mark.real, pytest.mark.slow]

KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is your favourite animal?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    from steerkit.runtimes import load_backend
    from steerkit.serving import ServerState, create_app
    from steerkit.sources import resolve_model

    source = resolve_model()
    state = ServerState(load_backend(source), "smollm2-135m", max_queue=2, api_key=KEY, source=source)
    state.profiles.load_shipped()
    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(100):
        if instance.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", state
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def _post(url: str, body, key: str | None = KEY, raw: bytes | None = None, path="/v1/chat/completions",
          method="POST", content_type="application/json"):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": content_type})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _ask(client, model, **kwargs) -> str:
    kwargs.setdefault("max_tokens", 24)
    answer = client.chat.completions.create(model=model, messages=QUESTION, **kwargs)
    return answer.choices[0].message.content


def test_models_and_profiles_are_listed(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "smollm2-135m" and "smollm2-135m+dog" in ids and "smollm2-135m+dog-clamp" in ids
    status, listing = _post(server[0], None, path="/v1/profiles", method="GET", raw=b"")
    dog = next(p for p in listing["data"] if p["name"] == "dog")
    edits = load_profile(shipped_profile("dog")).edits
    assert status == 200 and dog["neurons"] == [f"{e.layer}:{e.neuron}" for e in edits] and len(edits) >= 1536
    assert dog["measured"]["mention_steered"] > 0.5


def test_playground_and_atlas_pages(server):
    """The playground is one offline page; the atlas page it links to is served by the same server."""
    with urllib.request.urlopen(server[0] + "/", timeout=60) as response:
        page = response.read().decode()
    assert "steerkit playground" in page and "http://" not in page and "https://" not in page  # no CDN
    with urllib.request.urlopen(server[0] + "/atlas", timeout=600) as response:
        atlas = response.read().decode()
    assert "Neuron atlas" in atlas and "[29,808," in atlas and "location.hash" in atlas  # the dog link lands


def test_steered_answers_match_generate_and_nothing_leaks(client):
    plain = _ask(client, "smollm2-135m", temperature=0)
    sampled = _ask(client, "smollm2-135m", seed=7)
    steered = _ask(client, "smollm2-135m+dog", temperature=0)
    assert "dog" in steered.lower() and "dog" not in plain.lower(), (steered, plain)
    # The same through the body's extension object, and streamed.
    stream = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=24, temperature=0,
                                            stream=True, extra_body={"steerkit": {"profiles": ["dog"]}})
    assert "".join(c.choices[0].delta.content or "" for c in stream) == steered
    _ask(client, "smollm2-135m+dog-clamp@0.5+no-music", temperature=0)
    assert _ask(client, "smollm2-135m", temperature=0) == plain  # nothing leaks between requests
    assert _ask(client, "smollm2-135m", seed=7) == sampled
    cli = subprocess.run([sys.executable, "-m", "steerkit.cli", "generate", QUESTION[0]["content"], "-p", "dog",
                          "-t", "0", "-n", "24"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and cli.stdout.strip() == steered.strip(), (cli.stdout, cli.stderr)


def test_plain_completions(client):
    """/v1/completions continues raw text (no chat template), steered the same way, streamed or not."""
    prompt = "My favourite animal is the"
    plain = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=12, temperature=0)
    steered = client.completions.create(model="smollm2-135m+dog", prompt=prompt, max_tokens=12, temperature=0)
    assert plain.object == "text_completion" and plain.choices[0].text and steered.choices[0].text != plain.choices[0].text
    assert "dog" in steered.choices[0].text.lower(), steered.choices[0].text
    stream = client.completions.create(model="smollm2-135m+dog", prompt=prompt, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == steered.choices[0].text
    assert steered.usage.completion_tokens <= 12 and steered.usage.prompt_tokens >= 5


def test_usage_stop_and_length(client):
    answer = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=5, temperature=0)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens > 5
    full = _ask(client, "smollm2-135m", temperature=0)
    cut = full.split()[3]
    stopped = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=24, temperature=0,
                                             stop=[cut])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == full[:full.index(cut)]


@pytest.mark.parametrize("body, status, words", [
    ({"model": "smollm2-135m+nope", "messages": QUESTION}, 404, "unknown profile"),
    ({"model": "gpt-9", "messages": QUESTION}, 404, "unknown model"),
    ({"model": "smollm2-135m+../etc/passwd", "messages": QUESTION}, 400, "not a profile name"),
    ({"model": "smollm2-135m+dog@nan", "messages": QUESTION}, 400, "not a finite number"),
    ({"model": "smollm2-135m", "messages": "hi"}, 400, "messages"),
    ({"model": "smollm2-135m", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]"),
    ({"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 0}, 400, "max tokens"),
    ({"model": "smollm2-135m", "messages": QUESTION, "max_tokens": "ten"}, 400, "max tokens"),
    ({"model": "smollm2-135m", "messages": QUESTION, "temperature": -1}, 400, "temperature"),
    ({"model": "smollm2-135m", "messages": QUESTION, "steerkit": {"profiles": [3]}}, 400, "steerkit.profiles"),
    ({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi " * 2000}]}, 400, "context"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_one_openai_error_and_the_server_keeps_serving(server, client, body, status, words):
    code, answer = _post(server[0], body)
    assert code == status and words in answer["error"]["message"] and set(answer["error"]) >= {"type", "message"}
    assert client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=2).choices


def _announced_oversized(url: str) -> int:
    """Status of a POST announcing a 2 MiB body, of which only the first KiB is sent: the server must refuse it
    from the header.  (Sending all of it races the refusal: the server closes while the client still writes.)"""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        for name, value in (("Content-Type", "application/json"), ("Authorization", f"Bearer {KEY}"),
                            ("Content-Length", str(2 << 20))):
            connection.putheader(name, value)
        connection.endheaders(b"x" * 1024)
        return connection.getresponse().status
    finally:
        connection.close()


def test_transport_errors(server):
    url = server[0]
    assert _post(url, None, raw=b"{not json")[0] == 400
    assert _announced_oversized(url) == 413
    code, answer = _post(url, {"model": "smollm2-135m", "messages": QUESTION}, key=None)
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    assert _post(url, {"model": "smollm2-135m", "messages": QUESTION}, key="wrong")[0] == 401


def test_profiles_can_be_added_and_removed(server, client):
    from steerkit.api import load_profile
    from steerkit.profile import dump_profile

    url = server[0]
    text = dump_profile(load_profile("dog")).replace("name: dog", "name: my-dog", 1)
    code, added = _post(url, None, raw=text.encode(), path="/v1/profiles", content_type="application/yaml")
    assert code == 201 and added["name"] == "my-dog"
    assert "dog" in _ask(client, "smollm2-135m+my-dog", temperature=0).lower()
    code, error = _post(url, None, raw=b"steerkit: 1\nname: x\nmodel: {arch: llama}\nedits: []\n",
                        path="/v1/profiles", content_type="application/yaml")
    assert code == 400 and error["error"]["message"] == "profile.yaml:3: model: missing required field 'd_ff'"
    assert _post(url, None, raw=text.encode(), path="/v1/profiles", key=None)[0] == 401
    assert _post(url, None, raw=b"", path="/v1/profiles/my-dog", method="DELETE")[0] == 200
    assert _post(url, {"model": "smollm2-135m+my-dog", "messages": QUESTION})[0] == 404


def test_a_full_queue_answers_429(server):
    url, state = server
    results = []

    def slow():
        results.append(_post(url, {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 120})[0])

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    code, answer = _post(url, {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 2})
    for thread in threads:
        thread.join()
    assert code == 429 and answer["error"]["type"] == "rate_limit_error"
    assert results == [200, 200] and state.waiting == 0


def test_playground_in_a_real_browser(server):
    """Open the page in headless Chromium, pick dog, ask, and find a steered answer about dogs next to the other."""
    import os
    import shutil
    from pathlib import Path

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(server[0] + "/")
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        dog = "input[data-profile='dog']"
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, dog))
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(
            f"const box = document.querySelector(\"{dog}\"); if (box && !box.checked) box.click(); return box && box.checked;"))
        links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#profiles a")]
        assert any(link.endswith("/atlas#29:808") for link in links)
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 300).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
        plain = browser.find_element(By.ID, "plain").text
        steered = browser.find_element(By.ID, "steered").text
        artifacts = Path(os.environ.get("STEERKIT_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        browser.execute_script("document.querySelector('.answers').scrollIntoView({block: 'end'})")
        browser.save_screenshot(str(artifacts / "playground.png"))
    finally:
        browser.quit()
    assert plain.strip() and steered.strip() and plain != steered, (plain, steered)
    assert "dog" in steered.lower(), steered


def test_a_client_that_disconnects_frees_its_slot(server):
    """Closing a stream mid-answer stops the generation at its next token and frees the queue slot."""
    import http.client

    url, state = server
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 2000, "stream": True,
                       "temperature": 0.7})
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                                                              "Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    started = time.perf_counter()
    connection.close()
    for _ in range(100):
        if state.waiting == 0:
            break
        time.sleep(0.1)
    assert state.waiting == 0, "the slot was not freed"
    assert time.perf_counter() - started < 10  # far less than 2000 tokens take


def _fuzz_bodies():
    # hypothesis is imported with the module: importing it while the server thread compiles templates
    # trips a CPython 3.11 race in the AST constructor.
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=12))
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot", 3]),
                                     "content": st.one_of(st.text(max_size=30), st.integers())})
    steer = st.fixed_dictionaries({}, optional={"profiles": st.lists(st.one_of(st.sampled_from(["dog", "nope", "../x"]),
                                                                                scalar), max_size=3),
                                                "strength": scalar, "enabled": scalar})
    return st.fixed_dictionaries({}, optional={
        "model": st.one_of(st.sampled_from(["smollm2-135m", "smollm2-135m+dog", "smollm2-135m+dog@2", "x+dog",
                                            "smollm2-135m+dog@1e999", "smollm2-135m++"]), scalar),
        "messages": st.one_of(st.lists(message, max_size=3), scalar),
        "max_tokens": st.one_of(st.integers(-2, 4), scalar), "temperature": scalar, "top_p": scalar,
        "seed": st.one_of(st.integers(-2, 2 ** 33), scalar), "stop": st.one_of(st.lists(scalar, max_size=5), scalar),
        "stream": st.booleans(), "steerkit": st.one_of(steer, scalar),
    })


def test_fuzzed_requests_never_break_the_server(server, client):
    """Random bodies get answers or one OpenAI error, never a 500; a steady client's answer never changes."""
    url = server[0]
    steady = _ask(client, "smollm2-135m+dog", temperature=0, max_tokens=6)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_fuzz_bodies())
    def check(body):
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:
            body["max_tokens"] = 4
        request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        assert status in (200, 400, 404), (status, raw[:300])
        if status != 200:
            assert set(json.loads(raw)["error"]) >= {"message", "type"}

    check()
    assert _ask(client, "smollm2-135m+dog", temperature=0, max_tokens=6) == steady


def test_sigterm_finishes_the_request_in_flight_and_exits(tmp_path):
    import signal

    port = _free_port()
    folder = tmp_path / "profiles"  # --profiles: a folder's profiles are offered next to the shipped ones
    folder.mkdir()
    text = shipped_profile("dog-clamp").read_text()
    (folder / "mine.yaml").write_text(text.replace("name: dog-clamp", "name: my-dog"))
    assert "name: my-dog" in (folder / "mine.yaml").read_text()
    process = subprocess.Popen([sys.executable, "-m", "steerkit.cli", "serve", "--port", str(port),
                                "--profiles", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as response:
                    models = [m["id"] for m in json.loads(response.read())["data"]]
                break
            except OSError:
                time.sleep(0.2)
        assert "smollm2-135m+my-dog" in models and "smollm2-135m+dog-clamp" in models
        results = []
        thread = threading.Thread(target=lambda: results.append(_post(
            f"http://127.0.0.1:{port}", {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 300,
                                         "temperature": 0, "stop": ["never appears"]}, key=None)))
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive()  # the request is in flight when the signal comes
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=120)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert results and results[0][0] == 200 and results[0][1]["choices"][0]["message"]["content"], results
    assert "serving smollm2-135m on http://127.0.0.1" in process.stdout.read()


def test_the_readme_curl_line(server):
    """The README's curl request, sent to this server (plus the key it requires), answers about dogs."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "steerkit serve" in b)
    curl = block[block.index("curl "):].replace("\\\n", " ").strip()
    curl = curl.replace("http://127.0.0.1:8000", server[0]) + f" -H 'Authorization: Bearer {KEY}'"
    result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=300)
    answer = json.loads(result.stdout)
    assert answer["model"] == "smollm2-135m+dog" and "dog" in answer["choices"][0]["message"]["content"].lower()


def test_hostile_profiles_are_refused_in_one_line_and_the_server_keeps_serving(server, client):
    """Every hostile profile of the CLI suite POSTed to /v1/profiles: a 400 with one line naming the reason;
    names that would break the `model+PROFILE@S` syntax and a profile past the store's limit are refused too."""
    from hostile_profiles import PROFILES
    from steerkit.api import load_profile
    from steerkit.profile import dump_profile

    url, state = server
    steady = _ask(client, "smollm2-135m+dog", temperature=0, max_tokens=6)
    names = state.profiles.names()
    for case, (text, message) in PROFILES.items():
        code, error = _post(url, None, raw=text.encode("utf-8", "surrogatepass"), path="/v1/profiles",
                            content_type="application/yaml")
        reason = error["error"]["message"]
        assert code == 400 and "\n" not in reason, (case, code, reason)
        assert message in reason or (case == "lone surrogate" and reason == "profile: not UTF-8 text"), (case, reason)
    dog = dump_profile(load_profile("dog"))
    for name in ("a+b", "x@2", "../etc", "é", "a" * 65):
        code, error = _post(url, None, raw=dog.replace("name: dog", f"name: '{name}'", 1).encode(), path="/v1/profiles")
        assert code == 400 and "expected 1-64 letters" in error["error"]["message"], (name, error)
    state.profiles.limit = len(names) + 1
    try:
        assert _post(url, None, raw=dog.replace("name: dog", "name: one-more", 1).encode(), path="/v1/profiles")[0] == 201
        code, error = _post(url, None, raw=dog.replace("name: dog", "name: too-many", 1).encode(), path="/v1/profiles")
        assert code == 400 and "its limit" in error["error"]["message"]
    finally:
        state.profiles.limit = 256
        state.profiles.remove("one-more")
    assert state.profiles.names() == names
    assert _ask(client, "smollm2-135m+dog", temperature=0, max_tokens=6) == steady
