"""A real ``facegate serve`` in a child process, for tests that must kill it or watch its memory.

In-process servers (``create_server``) cannot be SIGKILLed without killing pytest, and their
memory is pytest's; a child process gives both. The child runs the real command-line entry
point with the real default pack from the session ``packs_dir`` fixture (no re-preparing).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from conftest import ROOT

from service.errors import ServiceNotReady
from service.pipeline.quality import QualityLimits, QualityPolicy
from service.transport.client import FaceGateClient

READY_TIMEOUT_S = 300.0

# Enrolment limits as lenient as identification's: LFW's 250x250 photos (and the shrunk seed
# photos) fail the strict enrolment preset, and these proofs are about crashes and hostile
# input, not about the quality gate (tests/test_quality*.py cover it).
IDENTIFY_GRADE_ENROLMENT = QualityLimits(
    **{f.name: getattr(QualityPolicy.identify(), f.name) for f in dataclasses.fields(QualityLimits)}
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One data directory served by successive child processes (``start`` after a kill)."""

    def __init__(
        self,
        data_dir: Path,
        packs_dir: Path,
        log_path: Path,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        # Only our FACEGATE_* variables: the developer's must not leak into the test.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
        self._env.update(
            FACEGATE_MODEL_DIR=str(packs_dir),
            FACEGATE_MODEL_THREADS="1",
            # a free port for the metrics endpoint: several servers may run at once
            FACEGATE_METRICS_LISTEN="127.0.0.1:0",
            OMP_NUM_THREADS="1",
            **dict(settings or {}),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()  # a fresh port per start: no waiting on the dead one's socket
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n---- start {self.starts} on port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "serve",
                    "--listen",
                    self.target,
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for SERVING; fail at once, with the child's log, if the child exits first.

        A child that died during start-up (bad environment, crash in recovery) must not look
        like a slow start: the failure names the exit status and shows what the server said.
        """
        deadline = time.monotonic() + timeout
        with FaceGateClient(self.target, timeout=10) as client:
            while True:
                if not self.alive():
                    status = self.proc.returncode if self.proc is not None else None
                    raise AssertionError(
                        f"the server exited (status {status}) before serving\n{self.log_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the server (pid {self.pid}) was not serving after {timeout:g}s"
                        f"\n{self.log_tail()}"
                    )
                try:
                    client.wait_ready(min(left, 2.0))
                    return
                except ServiceNotReady:
                    continue

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(60)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """The child's resident set size now (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
