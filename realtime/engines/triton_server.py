"""Start and stop a real Triton Inference Server (``tritonserver``) on loopback ports.

Where the binary comes from (:func:`find_tritonserver`, first hit wins):

1. ``STYLESTREAM_TRITONSERVER=/path/to/bin/tritonserver`` (e.g. ``/opt/tritonserver/bin/tritonserver`` in NVIDIA's
   image, whose ``backends/`` folder beside ``bin/`` is used as it is);
2. the ``nvidia-pytriton`` wheel in this interpreter's environment (``pip install --no-deps nvidia-pytriton==0.7.0``:
   Triton 2.51 with only the Python backend, runs on a CPU machine) — found without importing ``pytriton``.

The wheel keeps its Python-backend stubs apart (``python_backend_stubs/3.X/``), so :class:`TritonServer` lays out
a backend folder of symlinks (``backends/python/{libtriton_python.so, triton_python_backend_utils.py,
triton_python_backend_stub}`` with the stub of *this* interpreter's version) and starts the server with:

    PATH=<dir of sys.executable>:$PATH            the stub's embedded Python finds ``python3`` there, so its
                                                  sys.prefix / site-packages are this (virtual) environment's
    LD_LIBRARY_PATH=<LIBDIR of this Python>:…     the stub links libpython3.X.so.1.0: without this it takes the
                                                  system's (another 3.X build), which fails on this interpreter's
                                                  stdlib ('_thread.RLock' object has no attribute '_recursion_count')
    tritonserver --model-repository DIR --backend-directory TMP/backends
                 --http-address 127.0.0.1 --http-port P1 --grpc-address 127.0.0.1 --grpc-port P2
                 --allow-metrics false --disable-auto-complete-config --exit-timeout-secs 5

Ports are free loopback ports picked at start (a port taken in the meantime is retried with new ones). Readiness is
``GET /v2/health/ready`` = 200 (strict readiness: every model loaded). A server that exits while starting — a model
that fails to load, a missing backend — raises :class:`UserError` with the server's own error line.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.onnx import available_models
from export.triton_python import write_python_repository
from models.bundle import Bundle
from models.config import opt
from models.errors import UserError
from realtime.engines.exported import ensure_onnx

ENV_BINARY = "STYLESTREAM_TRITONSERVER"
INSTALL_HINT = ("pip install --no-deps nvidia-pytriton==0.7.0 (its wheel carries tritonserver with the Python "
                f"backend), or set {ENV_BINARY}=/path/to/bin/tritonserver")


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and the backend folder parts it needs."""

    binary: Path
    backends: Path | None  # a ready backend folder (NVIDIA's layout), or None: assemble one from the wheel's parts
    python_backend: Path | None  # folder with libtriton_python.so + triton_python_backend_utils.py (wheel layout)
    stub: Path | None  # triton_python_backend_stub for this interpreter's version (wheel layout)
    source: str  # "env" | "nvidia-pytriton"


def find_tritonserver(binary: str | os.PathLike | None = None) -> TritonInstall:
    """The tritonserver to run: ``binary``, else ``$STYLESTREAM_TRITONSERVER``, else the nvidia-pytriton wheel's.
    UserError (one line, with the install command) when there is none."""
    explicit = binary if binary is not None else os.environ.get(ENV_BINARY) or None
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UserError(f"tritonserver binary {path} does not exist or is not executable; {INSTALL_HINT}")
        backends = path.resolve().parent.parent / "backends"
        if (backends / "python" / "triton_python_backend_stub").exists():
            return TritonInstall(path, backends, None, None, "env")
        wheel = _wheel_parts(path.resolve().parent.parent)
        if wheel is not None:
            return TritonInstall(path, None, *wheel, source="env")
        return TritonInstall(path, backends if backends.is_dir() else None, None, None, "env")
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it (and its deps)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"no Triton Inference Server here: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    path = root / "bin" / "tritonserver"
    if not path.is_file():
        raise UserError(f"the pytriton package at {root.parent} has no tritonserver binary; {INSTALL_HINT}")
    wheel = _wheel_parts(root)
    if wheel is None:
        v = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise UserError(f"nvidia-pytriton at {root.parent} has no Python-backend stub for Python {v}; "
                        "use a Python it ships stubs for (3.8–3.13)")
    return TritonInstall(path, None, *wheel, source="nvidia-pytriton")


def _wheel_parts(root: Path) -> tuple[Path, Path] | None:
    """(python backend folder, stub for this Python) in nvidia-pytriton's ``tritonserver/`` layout, or None."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyb = root / "backends" / "python"
    stub = root / "python_backend_stubs" / v / "triton_python_backend_stub"
    if (pyb / "libtriton_python.so").is_file() and stub.is_file():
        return pyb, stub
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that lets the Python-backend stub embed *this* interpreter and its packages (module doc)."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlib.endswith(".so") and (Path(libdir) / ldlib).exists():
        env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _error_line(log: str) -> str:
    """The most telling line of a failed start: the first model load failure, else the first error line."""
    for pat in (r'failed to load \'[^\']+\' version \d+: [^\n"]*', r"error: [^\n]*", r"^E\d{4} [^\n]*"):
        m = re.search(pat, log, re.M)
        if m:
            line = m.group(0).replace("\\n", " ")
            return re.sub(r"\s+", " ", line.split(" At: ")[0].split("  At:")[0]).strip()[:400]
    tail = [ln for ln in log.strip().splitlines() if ln.strip()]
    return tail[-1][:400] if tail else "no output"


class TritonServer:
    """A tritonserver process serving ``model_repository`` on free loopback ports.

    ``with TritonServer(repo) as srv: make_engine(bundle, "triton", triton_url=srv.http_url)``. The server dies with
    the *thread* that started it (Linux parent-death signal): start it from a thread that outlives its use (the main
    thread, a fixture). ``start()`` waits
    until ``/v2/health/ready`` (every model loaded) or raises UserError; ``stop()`` sends SIGTERM (SIGKILL after
    ``timeout_s``); ``kill()`` / ``pause()`` / ``resume()`` are for fault tests. The server's output goes to
    ``log_path`` (``log_text()``). ``restart()`` starts a new process on the same ports."""

    def __init__(self, model_repository: str | os.PathLike, binary: str | os.PathLike | None = None,
                 grpc: bool = True, startup_timeout_s: float = 120.0, log_verbose: int = 0,
                 extra_args: tuple[str, ...] = (), host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0):
        self.repo = Path(model_repository).resolve()
        self.host = host  # the interface both endpoints listen on (Triton has no authentication: loopback default)
        self._want_ports = (http_port, grpc_port)  # 0: a free port picked at start
        if not self.repo.is_dir():
            raise UserError(f"Triton model repository {self.repo} is not a folder")
        self.install = find_tritonserver(binary)
        self.grpc, self.startup_timeout_s, self.log_verbose = grpc, startup_timeout_s, log_verbose
        self.extra_args = tuple(extra_args)
        self.workdir = Path(tempfile.mkdtemp(prefix="stylestream-triton-"))
        self.log_path = self.workdir / "tritonserver.log"
        self.backends = self.install.backends or self._assemble_backends()
        self.http_port = 0
        self.grpc_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        # the Python backend's shared-memory regions (/dev/shm/PREFIX…): ours alone, removed on close (a killed
        # server leaves them behind)
        self.shm_prefix = f"stylestream_triton_{os.getpid()}_{self.workdir.name.rsplit('-', 1)[-1]}"
        self._groups: list[int] = []  # process groups of every server process started (stubs outlive a kill -9)
        self._finalizer = weakref.finalize(self, _cleanup, None, self._groups, self.workdir, self.shm_prefix)

    # ---------------------------------------------------------------------------------------------------------
    @property
    def _reach(self) -> str:
        """The address clients on this machine use (a wildcard bind is reached on loopback)."""
        h = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{h}]" if ":" in h else h

    @property
    def http_url(self) -> str:
        return f"http://{self._reach}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._reach}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [str(self.install.binary), "--model-repository", str(self.repo),
               "--http-address", self.host, "--http-port", str(self.http_port),
               "--allow-metrics", "false", "--disable-auto-complete-config", "--exit-timeout-secs", "5",
               "--log-verbose", str(self.log_verbose),
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        if self.backends is not None:
            cmd += ["--backend-directory", str(self.backends)]
        cmd += (["--grpc-address", self.host, "--grpc-port", str(self.grpc_port)] if self.grpc
                else ["--allow-grpc", "false"])
        return cmd + list(self.extra_args)

    def _assemble_backends(self) -> Path:
        assert self.install.python_backend is not None and self.install.stub is not None
        pyb = self.workdir / "backends" / "python"
        pyb.mkdir(parents=True)
        for f in self.install.python_backend.iterdir():
            if f.is_file():
                (pyb / f.name).symlink_to(f.resolve())
        (pyb / "triton_python_backend_stub").symlink_to(self.install.stub.resolve())
        return pyb.parent

    # ---------------------------------------------------------------------------------------------------------
    def start(self, keep_ports: bool = False) -> TritonServer:
        """Start the server and wait until it is ready; returns self. ``keep_ports``: reuse the last ports."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this Triton server is already running")
        chosen = any(self._want_ports)
        for attempt in range(3):
            if not keep_ports or not self.http_port:
                want_http, want_grpc = self._want_ports
                self.http_port = want_http or free_port()
                self.grpc_port = (want_grpc or free_port()) if self.grpc else 0
            try:
                self._launch_and_wait()
                return self
            except _PortTaken:
                if keep_ports or chosen or attempt == 2:
                    raise UserError(f"Triton could not bind its ports ({_error_line(self.log_text())})") from None
        raise AssertionError("unreachable")

    def _launch_and_wait(self) -> None:
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self._groups.append(self.proc.pid)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self.proc, self._groups, self.workdir, self.shm_prefix)
        start_offset = self.log_path.stat().st_size
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                log_now = self._log_since(start_offset)
                self._reap_group()
                if "already in use" in log_now:
                    raise _PortTaken
                raise UserError(f"tritonserver exited ({code}) while starting: {_error_line(log_now)} "
                                f"(log: {self.log_path})")
            if self.is_ready():
                self.startup_s = time.perf_counter() - t0
                return
            if time.monotonic() > deadline:
                self.kill()
                raise UserError(f"tritonserver was not ready after {self.startup_timeout_s:.0f} s: "
                                f"{_error_line(self._log_since(start_offset))} (log: {self.log_path})")
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """``GET /v2/health/ready`` answered 200."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout_s) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds until ready (polling every 50 ms); UserError after ``timeout_s``."""
        t0 = time.perf_counter()
        while not self.is_ready(timeout_s=0.5):
            if time.perf_counter() - t0 > timeout_s:
                raise UserError(f"Triton at {self.http_url} was not ready after {timeout_s:.0f} s")
            time.sleep(0.05)
        return time.perf_counter() - t0

    def stats(self, model: str) -> dict[str, Any]:
        """``GET /v2/models/MODEL/stats``: the model's inference statistics (first version entry)."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{model}/stats", timeout=5) as r:
            data = json.loads(r.read())
        return dict(data["model_stats"][0])

    def processes(self) -> list[int]:
        """PIDs of the running server and its Python-backend stubs (for CPU accounting)."""
        return _members([self.proc.pid]) if self.proc is not None and self.proc.poll() is None else []

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---------------------------------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL to the process group after ``timeout_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
                self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL the server alone (as a crash would); its Python-backend stubs notice and exit on their own."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open (a stalled server)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> float:
        """Stop if running, start again on the same ports; returns the seconds until ready."""
        self.stop()
        self.start(keep_ports=True)
        assert self.startup_s is not None
        return self.startup_s

    def _reap_group(self) -> None:
        """SIGKILL what is left of the process groups this object's servers were started in: the Python-backend
        stubs a killed server left behind (measured: one of three still ran 17 s after a kill -9)."""
        _reap(self._groups)

    def close(self) -> None:
        """Stop the server and delete its work folder (backend links, log)."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> TritonServer:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PortTaken(Exception):
    pass


_PR_SET_PDEATHSIG = 1
try:  # resolved here, so the child runs no Python import between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent thread dies, so no server outlives a killed test run or
    benchmark (measured: a Python killed by SIGTERM left its SIGSTOPped server and stubs behind). Linux only."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _members(groups: list[int]) -> list[int]:
    """PIDs of live tritonserver / stub processes in the process groups ``groups`` (read from /proc, so a group id
    that the kernel has since handed to an unrelated process is never signalled)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError):
            continue
        if int(fields[2]) in groups and (cmd.endswith(b"tritonserver") or cmd.endswith(b"triton_python_backend_stub")):
            found.append(int(stat.parent.name))
    return found


def _reap(groups: list[int]) -> None:
    for pid in _members(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def _cleanup(proc: subprocess.Popen[bytes] | None, groups: list[int], workdir: Path, shm_prefix: str) -> None:
    """Finalizer: no server, stub or shared-memory region outlives its TritonServer object (or the process)."""
    _reap(groups)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for f in Path("/dev/shm").glob(f"{shm_prefix}*"):
        f.unlink(missing_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class ModelServerConfig:
    """A Triton server hosting a bundle's networks (`stylestream serve-models`; CLI flags of the same names)."""

    host: str = opt("127.0.0.1", "interface the HTTP and gRPC endpoints listen on (Triton has no authentication: "
                                 "anything but loopback belongs on a private network)")
    http_port: int = opt(8000, "HTTP port (0: any free port)", min=0, max=65535)
    grpc_port: int = opt(8001, "gRPC port (0: any free port)", min=0, max=65535)
    max_batch: int = opt(8, "largest batch the dynamic batcher forms, and a client may send", min=1, max=256)
    queue_delay_us: int = opt(2000, "how long the dynamic batcher waits for more requests to batch with (µs)", min=0,
                              max=1_000_000)
    instances: int = opt(1, "model instances per network (executions in parallel)", min=1, max=64)
    threads: int = opt(1, "ONNX Runtime threads per instance", min=1, max=256)


def serve_bundle(bundle: Bundle, repository: str | os.PathLike, config: ModelServerConfig | None = None,
                 progress: Callable[[str], None] | None = None) -> TritonServer:
    """Write the Python-backend repository of ``bundle``'s networks (export/triton_python.py: ONNX Runtime inside
    Triton, dynamic batching; the ONNX export comes from the cache, made once) into ``repository`` and return a
    :class:`TritonServer` for it on ``config``'s host and ports (not started yet)."""
    cfg = config or ModelServerConfig()
    onnx_dir = ensure_onnx(bundle, None, "fp32", available_models(bundle), progress)
    write_python_repository(bundle, repository, max_batch=cfg.max_batch, queue_delay_us=cfg.queue_delay_us,
                            onnx_dir=onnx_dir, instances=cfg.instances, threads=cfg.threads, progress=progress)
    return TritonServer(repository, host=cfg.host, http_port=cfg.http_port, grpc_port=cfg.grpc_port)
