"""Starting and stopping a `chunkwise serve` process on loopback, for the scripts beside this one
(standard library only)."""
import http.client
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"  # loopback only, by construction


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_healthy(proc, port, log_hint="", tries=600):
    """Waits until GET /health answers 200; exits the script if the server dies or never answers."""
    for _ in range(tries):
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}){log_hint}")
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"the server did not answer /health{log_hint}")


def stop(proc):
    """SIGTERM (graceful shutdown), then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
