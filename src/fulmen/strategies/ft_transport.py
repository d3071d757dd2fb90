"""How a restarted replica group receives a live peer's state: one HTTP server per process, on one host.

torchft's own HTTP transport listens on every interface and advertises the machine's hostname;
this one listens on the address it is given (loopback by default, as ``fulmen run`` starts every
group on one machine), and serialises the state when it is offered, so that the bytes a peer
reads are one consistent snapshot even while the sender trains on.
"""

from __future__ import annotations

import io
import threading
import urllib.request
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torchft.checkpointing.transport import CheckpointTransport


class HostCheckpointTransport(CheckpointTransport[Any]):
    """Serves the latest offered state at ``http://HOST:PORT/<step>`` until the step commits."""

    def __init__(self, host: str = "127.0.0.1", timeout: timedelta = timedelta(seconds=60)) -> None:
        self._host = host
        self._timeout = timeout
        self._offer: tuple[int, bytes] | None = None
        self._changed = threading.Condition()
        transport = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                try:
                    step = int(self.path.strip("/"))
                except ValueError:
                    self.send_error(400, f"expected /<step>, got {self.path}")
                    return
                payload = transport._wait_for(step)
                if payload is None:
                    self.send_error(404, f"step {step} is not offered")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # one line per request would flood the logs
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fulmen-ft-transport")
        self._thread.start()

    def metadata(self) -> str:
        return f"http://{self._host}:{self._server.server_address[1]}/"

    def send_checkpoint(self, dst_ranks: list[int], step: int, state_dict: Any, timeout: timedelta) -> None:
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        with self._changed:
            self._offer = (step, buffer.getvalue())
            self._changed.notify_all()

    def disallow_checkpoint(self) -> None:
        with self._changed:
            self._offer = None

    def recv_checkpoint(self, src_rank: int, metadata: str, step: int, timeout: timedelta) -> Any:
        with urllib.request.urlopen(f"{metadata}{step}", timeout=timeout.total_seconds()) as response:
            payload = response.read()
        # A peer of the same job on the address it advertised: its optimizer and random states are
        # Python objects (numpy's generator state), which weights_only loading refuses.
        return torch.load(io.BytesIO(payload), weights_only=False)

    def shutdown(self, wait: bool = True) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _wait_for(self, step: int) -> bytes | None:
        """The receiver may ask before the sender's quorum thread has offered the state: wait for it."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._offer is not None and self._offer[0] == step, timeout=self._timeout.total_seconds()
            )
            offer = self._offer
        return offer[1] if offer is not None and offer[0] == step else None
