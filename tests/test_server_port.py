"""The port a vLLM server is started on: chosen free, then bound by vLLM seconds later. Another process may take
it in between; the server must then start on another port, and never take a stranger's replies as its own.
vLLM itself is replaced by a small module with its behaviour here (it binds the port first, and fails with
`OSError: [Errno 98] Address already in use` when it cannot; `/v1/models` lists the served name)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from servers import vllm_server
from servers.profiles import ModelProfile
from servers.vllm_server import VLLMServer

FAKE_VLLM = '''
import argparse, json, socket
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--host")
parser.add_argument("--served-model-name")
args, _ = parser.parse_known_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


HTTPServer.allow_reuse_address = False
HTTPServer((args.host, args.port), Handler).serve_forever()  # raises EADDRINUSE as vLLM's socket bind does
'''


def fake_vllm_python(tmp_path):
    """An executable that is this Python with a `vllm` package holding only the API server module."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_VLLM)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "fake"}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(python)


class Stranger(BaseHTTPRequestHandler):
    """Someone else's server on the port we were told was free: it answers /models with 200 too."""

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "someone-else"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def test_a_port_taken_between_its_choice_and_vllms_bind_is_not_ours(tmp_path, monkeypatch):
    stranger = ThreadingHTTPServer(("127.0.0.1", 0), Stranger)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    taken = stranger.server_address[1]
    real = vllm_server.free_port
    offered = iter([taken])
    monkeypatch.setattr(vllm_server, "free_port", lambda host="127.0.0.1": next(offered, None) or real(host))
    server = VLLMServer(ModelProfile(name="mine", model="org/mine"), "org/mine", tmp_path / "server.log",
                        device="cpu", python=fake_vllm_python(tmp_path), startup_timeout=120)
    try:
        with server:
            assert server.port != taken
            listed = httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]
            assert [m["id"] for m in listed] == ["mine"]
    finally:
        stranger.shutdown()
    assert "Address already in use" in server.log_path.read_text()  # the first try met the stranger's port

