"""Small networking helpers shared by the server fixtures (the port picking is the emulator's)."""
import socket
import time

from stack_emulator.ports import LOWEST_PORT, ephemeral_port_range, free_port, free_ports, port_free  # noqa: F401


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on host:port, or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
