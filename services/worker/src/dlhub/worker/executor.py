"""The executor process: loads servables and runs them, one request at a time, for its worker.

Started by the pool as ``python -m dlhub.worker.executor``. Requests arrive on stdin and replies leave on
stdout (``dlhub.worker.protocol`` frames); before serving, the process moves both pipes to private file
descriptors and points fd 0 at /dev/null and fd 1 at stderr, so a model that prints (even from C) cannot
corrupt the stream. With ``--socket PATH`` (a docker executor: the worker listens on a unix socket in a
directory mounted into the container, so that no ``docker run -i`` relay sits in the request path) the same
frames travel over that socket instead, and fds 0 and 1 are pointed away all the same. Servables stay loaded
(warm) in an LRU cache keyed by their version directory. The process exits when its stdin (or the socket)
closes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import msgspec

import dlhub
from dlhub.common.codec import DEFAULT_MAX_MESSAGE_BYTES, Codec
from dlhub.common.errors import DLHubError, MessageTooLarge, TaskNotStarted, TaskTimeout
from dlhub.common.messages import ErrorInfo
from dlhub.worker.files import FileLimits, TaskFiles
from dlhub.worker.protocol import (
    HEADER_BYTES,
    RECALL_SIGNAL,
    ExecReply,
    ExecRequest,
    Frame,
    Ready,
    body_length,
    decode_request,
    encode_frame,
)
from dlhub.worker.servables import Servable, ServableLoadError, load_servable
from dlhub.worker.servables.scikit_learn import ScikitLearnServable

DEFAULT_CACHE_SIZE = 32
PIPE_BYTES = 1 << 20


def _array_header(data: memoryview, offset: int) -> tuple[int, int] | None:
    """``(length, header bytes)`` of the msgpack array starting at ``offset``, else ``None``."""
    if offset >= len(data):
        return None
    first = data[offset]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and offset + 3 <= len(data):
        return int.from_bytes(data[offset + 1 : offset + 3], "big"), 3
    if first == 0xDD and offset + 5 <= len(data):
        return int.from_bytes(data[offset + 1 : offset + 5], "big"), 5
    return None


def decode_float_rows(raw: bytes | memoryview) -> Any:
    """Decode a msgpack array of equal-length arrays of float64 straight into a 2-D float64 ``ndarray``.

    JSON inputs (lists of lists of numbers) arrive this way; decoding them to Python lists and then calling
    ``numpy.asarray`` costs ~1 us per value, this vectorised check-and-view a few ns. Returns ``None`` when
    the value is anything else (ints, ragged rows, nested deeper), and the caller decodes it normally.
    """
    import numpy as np

    data = memoryview(raw)
    outer = _array_header(data, 0)
    if outer is None or outer[0] == 0:
        return None
    rows, offset = outer
    inner = _array_header(data, offset)
    if inner is None or inner[0] == 0:
        return None
    cols, row_header = inner
    row_bytes = row_header + 9 * cols
    if len(data) - offset != rows * row_bytes:
        return None
    table = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(rows, row_bytes)
    header = table[0, :row_header]
    if not (table[:, :row_header] == header).all():
        return None
    cells = table[:, row_header:].reshape(rows, cols, 9)
    if not (cells[:, :, 0] == 0xCB).all():  # every value a float64
        return None
    return np.ascontiguousarray(cells[:, :, 1:]).view(">f8").reshape(rows, cols).astype(np.float64)


def _dirs(paths: Any) -> tuple[str, ...]:
    return tuple(os.path.join(os.path.realpath(str(path)), "") for path in paths if path)


# Frames in DLHub's own packages are the server's, never the caller's business; library and standard-library
# frames are dropped only before the first frame of the servable (the call chain leading into it).
_SERVER_DIRS = _dirs(dlhub.__path__)
_LIBRARY_DIRS = _dirs({sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")})


def _servable_frames(stack: traceback.StackSummary) -> traceback.StackSummary:
    frames: list[traceback.FrameSummary] = []
    for frame in stack:
        filename = os.path.realpath(frame.filename) if frame.filename.startswith(os.sep) else frame.filename
        if filename.startswith(_SERVER_DIRS):
            continue
        if not frames and (filename.startswith(_LIBRARY_DIRS) or filename.startswith("<frozen")):
            continue
        frames.append(frame)
    return traceback.StackSummary.from_list(frames)


def _filter(exc: traceback.TracebackException, seen: set[int]) -> None:
    if id(exc) in seen:
        return
    seen.add(id(exc))
    exc.stack = _servable_frames(exc.stack)
    for chained in (exc.__cause__, exc.__context__, *(exc.exceptions or ())):
        if chained is not None:
            _filter(chained, seen)


def servable_traceback(exc: BaseException) -> str:
    """``exc``'s traceback with the servable's frames only: none of DLHub's own file paths reach callers."""
    formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _filter(formatted, set())
    return "".join(formatted.format())


def _error_from_exception(exc: BaseException, *, message: str | None = None) -> ErrorInfo:
    """A servable's own exception: code ``servable_error``, its type name, message and traceback."""
    return ErrorInfo(
        code="servable_error",
        message=message or str(exc) or type(exc).__name__,
        exception_type=type(exc).__name__,
        traceback=servable_traceback(exc),
    )


def _error_from_dlhub(exc: DLHubError) -> ErrorInfo:
    """A typed failure; a load error reports the exception that caused it."""
    cause = exc.__cause__
    if isinstance(exc, ServableLoadError) and cause is not None:
        return ErrorInfo(
            code=exc.code,
            message=exc.message,
            exception_type=type(cause).__name__,
            traceback=servable_traceback(cause),
        )
    return ErrorInfo(code=exc.code, message=exc.message)


class Executor:
    """Serve ``ExecRequest`` frames: load (once), decode, call, encode, reply."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        file_limits: FileLimits | None = None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.file_limits = file_limits or FileLimits()
        self.codec = Codec(max_message_bytes=max_message_bytes)
        self.cache_size = cache_size
        self.loads = 0
        self._cache: OrderedDict[str, Servable] = OrderedDict()
        self._pid = os.getpid()

    def _servable(self, version_dir: str) -> tuple[Servable, float]:
        servable = self._cache.get(version_dir)
        if servable is not None:
            self._cache.move_to_end(version_dir)
            return servable, 0.0
        start = time.perf_counter()
        servable = load_servable(Path(version_dir))
        load_ms = (time.perf_counter() - start) * 1000.0
        self.loads += 1
        self._cache[version_dir] = servable
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return servable, load_ms

    def _decode_inputs(self, servable: Servable, raw: msgspec.Raw) -> Any:
        """Decode the inputs; a scikit-learn model (which takes ``numpy.asarray(inputs)`` anyway) gets rows of
        floats as an array directly."""
        if isinstance(servable, ScikitLearnServable):
            array = decode_float_rows(raw)
            if array is not None:
                return array
        return self.codec.decode_value(raw)

    def handle(self, request: ExecRequest) -> ExecReply:
        # Downloaded file inputs (files.py) live until the reply is built.
        with TaskFiles(self.file_limits) as files:
            return self._handle(request, files)

    def _handle(self, request: ExecRequest, files: TaskFiles) -> ExecReply:
        load_ms = 0.0
        if request.deadline_unix_s and time.time() > request.deadline_unix_s:
            error = ErrorInfo(code=TaskTimeout.code, message="the task passed its deadline before it started")
            return self._failed(request, error, load_ms)
        try:
            servable, load_ms = self._servable(request.version_dir)
            spec = servable.method_spec(request.method)
            parameters = servable.merged_parameters(
                request.method, self.codec.decode_value(request.parameters)
            )
            inputs = files.localize(spec, self._decode_inputs(servable, request.inputs))
        except DLHubError as exc:
            return self._failed(request, _error_from_dlhub(exc), load_ms)
        except Exception as exc:
            error = _error_from_exception(exc, message=f"cannot load servable {request.servable}: {exc}")
            return self._failed(request, error, load_ms)

        start = time.perf_counter()
        try:
            output = servable.invoke(request.method, inputs, parameters)
        except (Exception, SystemExit) as exc:
            inference_ms = (time.perf_counter() - start) * 1000.0
            # A DLHubError here is the loader refusing the inputs (e.g. autobatch without a list).
            error = _error_from_dlhub(exc) if isinstance(exc, DLHubError) else _error_from_exception(exc)
            return self._failed(request, error, load_ms, inference_ms)
        inference_ms = (time.perf_counter() - start) * 1000.0

        try:
            raw = self.codec.encode_value(output)
        except DLHubError as exc:
            error = ErrorInfo(
                code="servable_error",
                message=f"the output of method {request.method!r} cannot be encoded: {exc.message}",
                exception_type=type(output).__name__,
            )
            return self._failed(request, error, load_ms, inference_ms)
        # Leave room for the reply's own fields within the frame limit.
        if len(raw) + 1024 > self.max_message_bytes:
            error = ErrorInfo(
                code=MessageTooLarge.code,
                message=f"the output of {len(raw)} bytes exceeds the limit of {self.max_message_bytes} bytes",
            )
            return self._failed(request, error, load_ms, inference_ms)
        return ExecReply(
            seq=request.seq,
            ok=True,
            output=raw,
            inference_ms=inference_ms,
            load_ms=load_ms,
            loads=self.loads,
            pid=self._pid,
        )

    def _failed(
        self, request: ExecRequest, error: ErrorInfo, load_ms: float, inference_ms: float = 0.0
    ) -> ExecReply:
        return ExecReply(
            seq=request.seq,
            ok=False,
            error=error,
            inference_ms=inference_ms,
            load_ms=load_ms,
            loads=self.loads,
            pid=self._pid,
        )

    def _write(self, writer: IO[bytes], frame: Frame) -> None:
        writer.write(encode_frame(frame, max_bytes=self.max_message_bytes))
        writer.flush()

    def serve(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        """Answer requests until ``reader`` reaches end of file (the worker closed the pipe or died)."""
        self._write(writer, Ready(pid=self._pid))
        while True:
            header = reader.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                return
            length = body_length(header, max_bytes=self.max_message_bytes)
            body = reader.read(length)
            if len(body) < length:
                return
            request = decode_request(body)
            self._write(writer, _not_started(request) if _recall.is_set() else self.handle(request))


_recall = threading.Event()
"""Set by ``RECALL_SIGNAL``: the worker is draining; requests not started yet are answered ``not_started``
(the worker hands them back to the broker). Checked before each request starts, so a request either runs
to its end or is answered unstarted, never both."""


def _not_started(request: ExecRequest) -> ExecReply:
    error = ErrorInfo(code=TaskNotStarted.code, message="the worker is shutting down; not started here")
    return ExecReply(seq=request.seq, ok=False, error=error, pid=os.getpid())


def _widen_pipe(fd: int) -> None:
    """Grow a pipe from 64 KiB to ``PIPE_BYTES`` where Linux allows it, so that a large request or reply
    (a batch of rows, an image) crosses in one write instead of a writer/reader ping-pong per 64 KiB. Either
    end may resize a pipe; doing it here works whatever event loop the worker runs."""
    set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_pipe_size is not None:
        with contextlib.suppress(OSError):  # not a pipe, or above /proc/sys/fs/pipe-max-size: keep it
            fcntl.fcntl(fd, set_pipe_size, PIPE_BYTES)


def _private_pipes() -> tuple[IO[bytes], IO[bytes]]:
    """Move the protocol pipes off fds 0/1 so that stray prints and reads cannot touch them."""
    in_fd, out_fd = os.dup(0), os.dup(1)  # dup'd descriptors are not inherited by the model's subprocesses
    _widen_pipe(in_fd)
    _widen_pipe(out_fd)
    _stray_stdio()
    return os.fdopen(in_fd, "rb"), os.fdopen(out_fd, "wb")


def _stray_stdio() -> None:
    """Point fd 0 at /dev/null and fd 1 at stderr: what a model reads or prints goes nowhere harmful."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)


def _socket_streams(path: str) -> tuple[IO[bytes], IO[bytes]]:
    """Connect to the worker's unix socket at ``path``; return buffered streams over it (fds that the model's
    subprocesses do not inherit), with fds 0/1 moved out of the way as in pipe mode."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # a large request or reply crosses in fewer wakeups
            sock.setsockopt(socket.SOL_SOCKET, option, PIPE_BYTES)
    sock.connect(path)
    fd = sock.detach()
    _stray_stdio()
    return os.fdopen(fd, "rb"), os.fdopen(os.dup(fd), "wb")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker dies, so a model stuck in a call is not orphaned."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlhub.worker.executor")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE)
    defaults = FileLimits()
    parser.add_argument("--file-fetch-max-bytes", type=int, default=defaults.max_bytes)
    parser.add_argument("--file-fetch-timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--file-fetch-max-redirects", type=int, default=defaults.max_redirects)
    parser.add_argument(
        "--socket", help="speak the protocol over the worker's unix socket at this path, not stdin/stdout"
    )
    args = parser.parse_args(argv)
    file_limits = FileLimits(
        max_bytes=args.file_fetch_max_bytes,
        timeout_s=args.file_fetch_timeout_s,
        max_redirects=args.file_fetch_max_redirects,
    )
    # The worker decides when this process stops (closing stdin, or a kill); Ctrl-C in a terminal reaches the
    # whole process group and must not kill a task the worker will report on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(RECALL_SIGNAL, lambda _signum, _frame: _recall.set())
    _die_with_parent()
    try:
        reader, writer = _socket_streams(args.socket) if args.socket else _private_pipes()
    except OSError as exc:
        print(f"executor {os.getpid()}: cannot reach the worker at {args.socket}: {exc}", file=sys.stderr)
        return 2
    # NumPy is a dependency of most servables and of the ndarray codec: pay its import before the first task
    # rather than during it. A servable's own environment may not have it (nor need it).
    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401

    executor = Executor(
        max_message_bytes=args.max_message_bytes, cache_size=args.cache_size, file_limits=file_limits
    )
    try:
        executor.serve(reader, writer)
    except (ConnectionError, msgspec.DecodeError, DLHubError) as exc:
        print(f"executor {os.getpid()}: stopping: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
