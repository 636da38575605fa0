"""Shared fixtures: the network is blocked and the hub is offline for every test."""

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Make any outgoing connection fail, so a test that would download something fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in tests")

    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost")):
            return real_connect(sock, address)
        refuse()

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: connect(socket.socket(), address) if address[0] in ("127.0.0.1", "::1", "localhost") else refuse())


@pytest.fixture(scope="session")
def tiny_pipe():
    from fidelity_lib.models import tiny_pipeline

    return tiny_pipeline(seed=0)
