"""``imsim-lab explore [RUNS_DIR]``: start the Streamlit explorer on 127.0.0.1 and print its address."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import ImsimError

MAX_UPLOAD_MB = 200


def register(sub) -> None:
    p = sub.add_parser("explore", help="start the explorer (Streamlit) on a results folder",
                       description="Start the explorer on 127.0.0.1: leaderboard with bootstrap intervals, "
                                   "per-augmentation AP, failure cases, comparisons, benchmark browser and "
                                   "submission upload, over every run folder found under RUNS_DIR.")
    p.add_argument("runs_dir", nargs="?", default="results", help="results folder (default: ./results)")
    p.add_argument("--port", type=int, default=8501, help="first port to try (default 8501; the next free one "
                                                           "is used when taken)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server to answer")
    p.set_defaults(func=run)


def app_path() -> Path:
    """``explorer/app.py`` of the source tree (the explorer ships with the repository)."""
    here = Path(__file__).resolve().parents[2] / "explorer" / "app.py"
    if not here.is_file():
        raise ImsimError(f"{here}: the explorer app is not there; run imsim-lab from a clone of the repository "
                         "(pip install -e .)")
    return here


def free_port(start: int, tries: int = 20) -> int:
    """The first port from ``start`` that 127.0.0.1 can bind."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ImsimError(f"no free port in {start}..{start + tries - 1}; choose one with --port")


def start_server(runs_dir: str | Path, port: int, timeout: float = 60.0, quiet: bool = False):
    """Start ``streamlit run explorer/app.py`` on 127.0.0.1:``port`` and wait until it answers.

    Returns:
        (process, url).

    Raises:
        ImsimError: the folder is missing, or the server did not answer in ``timeout`` seconds.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ImsimError(f"{runs_dir}: not a folder (give the results folder that holds run folders)")
    env = dict(os.environ, IMSIM_RUNS_DIR=str(runs_dir.resolve()))
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path()), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--server.fileWatcherType", "none",
           "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
           "--", str(runs_dir.resolve())]
    # streamlit's own banner goes away (the address is printed by us); its errors stay visible
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ImsimError(f"the explorer exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise ImsimError(f"the explorer did not answer on {url} within {timeout:.0f} s")


def serve(runs_dir: str | Path, port: int = 8501, timeout: float = 60.0, hints: list[str] | None = None) -> int:
    """Start the explorer, print its address (and ``hints``), and wait until Ctrl-C."""
    port = free_port(port)
    proc, url = start_server(runs_dir, port, timeout)
    print(f"explorer running at {url}  (results: {Path(runs_dir).resolve()}; Ctrl-C stops it)", flush=True)
    for h in hints or []:
        print(h, flush=True)

    def _stop(signum, frame):  # `kill` (SIGTERM) stops the server too, like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("explorer stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args) -> int:
    return serve(args.runs_dir, args.port, args.timeout)
