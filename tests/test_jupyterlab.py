"""JupyterLab opens every chapter, .ipynb and .py pair alike, as a notebook on the kernel `make` registers."""

import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fidelity_lib.book import KERNEL_NAME, NOTEBOOKS_DIR, REPO_ROOT, book_notebooks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab_server():
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernel {KERNEL_NAME!r} is not registered: run `make setup` first")
    port, token = free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO_ROOT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode())
            time.sleep(0.5)
    else:
        server.kill()
        raise TimeoutError("jupyter lab did not answer within 60 s")
    yield lambda path: json.load(urllib.request.urlopen(f"{base}{path}{'&' if '?' in path else '?'}token={token}", timeout=30))
    server.terminate()
    server.wait(timeout=20)


def test_lab_knows_the_book_kernel(lab_server):
    assert KERNEL_NAME in lab_server("/api/kernelspecs")["kernelspecs"]


@pytest.mark.parametrize("suffix", [".ipynb", ".py"])
def test_every_chapter_opens_as_a_notebook_with_the_book_kernel(lab_server, suffix):
    for notebook in book_notebooks():
        relative = (notebook.with_suffix(suffix)).relative_to(REPO_ROOT).as_posix()
        model = lab_server(f"/api/contents/{relative}?type=notebook&content=1")
        assert model["type"] == "notebook", relative
        assert model["content"]["metadata"]["kernelspec"]["name"] == KERNEL_NAME, relative
        assert any("parameters" in cell["metadata"].get("tags", []) for cell in model["content"]["cells"]), relative
