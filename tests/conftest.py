"""Shared fixtures: the network is blocked and the hub is offline for every test."""

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Make any outgoing connection beyond loopback fail, so a test that would download something fails loudly."""
    real_connect, real_create_connection = socket.socket.connect, socket.create_connection

    def connect(sock, address):
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in LOOPBACK):
            return real_connect(sock, address)
        raise OSError(f"network access is blocked in tests (tried {address})")

    def create_connection(address, *args, **kwargs):
        if address[0] in LOOPBACK:
            return real_create_connection(address, *args, **kwargs)
        raise OSError(f"network access is blocked in tests (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(scope="session")
def tiny_pipe():
    from fidelity_lib.models import tiny_pipeline

    return tiny_pipeline(seed=0)
