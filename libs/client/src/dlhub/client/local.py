"""The toolbox locally: run a servable, and check its test vectors, on this machine before publishing it.

A local run stages the publication document and the files it names as a version directory (``metadata.json``
and ``files/``, the layout the builder writes), starts the worker's own executor process
(``python -m dlhub.worker.executor``, with this interpreter) and sends it the frames the worker's pool sends
(``dlhub.worker.protocol``). The servable is therefore loaded and called by the very code that serves it;
nothing here loads a model. Inputs are checked first against the method's declared input type with the
registry's validators (``dlhub.common.argtypes``), and test vector outputs are compared with the registry's
rules (``dlhub.common.vectors``), so a wrong input or a failing vector fails locally as it would served.

What differs from a served run: the servable runs with the packages of this Python environment (a server
installs the document's declared dependencies, or uses its own shared environment), and file inputs must
be ``{"url": "http(s)://..."}`` references (there is no registry to upload blobs to). The executor comes
with the worker distribution (``dlhub-worker``); the SDK alone (``dlhub-client``) cannot run servables and
says so with ``server_not_installed``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final

from dlhub.client.packaging import declared_files
from dlhub.client.tokens import ServerNotInstalled
from dlhub.common.argtypes import check_inputs
from dlhub.common.codec import DEFAULT_MAX_MESSAGE_BYTES, Codec, from_json, to_json
from dlhub.common.errors import DLHubError, InvalidMessage, ValidationFailed
from dlhub.common.servable_store import FILES_DIRNAME, METADATA_FILENAME
from dlhub.common.vectors import NO_VECTORS_NOTE, VectorOutcome, declared_vectors, judge

if TYPE_CHECKING:
    from dlhub.worker.protocol import ExecReply

LOCAL_TASK_ID: Final = "local"
STOP_TIMEOUT_S: Final = 10.0
WORKER_DISTRIBUTION: Final = "dlhub-worker"


def require_worker() -> None:
    """Raise ``ServerNotInstalled`` unless the worker's executor is importable here."""
    if importlib.util.find_spec("dlhub.worker") is None:
        raise ServerNotInstalled(
            "running a servable locally uses the DLHub worker's executor, which is not installed here (this "
            f"is the SDK-only dlhub-client): `pip install {WORKER_DISTRIBUTION}` (or the full server, "
            "`dlhub`) in this environment, with the packages the servable needs"
        )


def load_document(
    document_or_path: Mapping[str, Any] | str | Path, base_dir: str | Path | None = None
) -> tuple[dict[str, Any], Path]:
    """``(document, folder its files are relative to)``: a path's folder, else ``base_dir`` (default: cwd)."""
    if isinstance(document_or_path, Mapping):
        return dict(document_or_path), Path(base_dir or ".").resolve()
    path = Path(document_or_path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValidationFailed(f"{path} is not valid JSON: {exc}", field="metadata") from exc
    if not isinstance(document, dict):
        raise ValidationFailed(f"{path} does not hold a JSON object", field="metadata")
    return document, Path(base_dir).resolve() if base_dir is not None else path.resolve().parent


def document_label(document: Mapping[str, Any]) -> str:
    name = (document.get("dlhub") or {}).get("name")
    return f"{name} (local)" if isinstance(name, str) and name else "servable (local)"


def stage_version(document: Mapping[str, Any], base_dir: Path, version_dir: Path) -> None:
    """Write ``document`` and copies of the files it declares as a version directory, as the builder does."""
    if (document.get("dlhub") or {}).get("type") == "pipeline":
        raise ValidationFailed(
            "a pipeline runs published servables on a server; run its steps locally one by one instead",
            field="dlhub.type",
        )
    files_dir = version_dir / FILES_DIRNAME
    files_dir.mkdir(parents=True)
    for rel in declared_files(document):
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValidationFailed(
                f"declared file {rel!r} must be relative and stay inside the folder", field="dlhub.files"
            )
        source, target = base_dir / pure, files_dir / pure
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, target)
        else:
            raise ValidationFailed(f"declared file {rel!r} not found under {base_dir}", field="dlhub.files")
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    (version_dir / METADATA_FILENAME).write_text(text + "\n", encoding="utf-8")


def _error_dict(reply: ExecReply) -> dict[str, Any]:
    """The JSON shape of a failed run, as the registry answers it (``error.type`` is the error code)."""
    error = reply.error
    if error is None:
        return {"type": "dlhub_error", "message": "the run failed without an error description"}
    return {
        "type": error.code,
        "message": error.message,
        "exception_type": error.exception_type,
        "traceback": error.traceback,
    }


class LocalServable:
    """One servable staged from its document, served by one executor process while the context is open.

    ``run_detailed`` answers like ``POST .../run``: ``{"task_id", "state", "output" | "error", "timings"}``.
    """

    def __init__(
        self,
        document_or_path: Mapping[str, Any] | str | Path,
        *,
        base_dir: str | Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.document, self.base_dir = load_document(document_or_path, base_dir)
        self.label = document_label(self.document)
        self.max_message_bytes = max_message_bytes
        self.codec = Codec(max_message_bytes=max_message_bytes)
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._seq = 0

    def __enter__(self) -> LocalServable:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def version_dir(self) -> Path:
        assert self._root is not None, "start() first"
        return self._root / "version"

    def start(self) -> None:
        """Stage the version, start the executor and wait for its ``ready`` frame."""
        require_worker()
        from dlhub.worker.protocol import Ready

        self._root = Path(tempfile.mkdtemp(prefix="dlhub-local-"))
        stage_version(self.document, self.base_dir, self.version_dir)
        # The executor's cwd is the staging folder, not the caller's: a model reading a relative path that
        # the package does not ship fails here as it would on a server.
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dlhub.worker.executor",
                "--max-message-bytes",
                str(self.max_message_bytes),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self._root,
        )
        frame = self._read_frame()
        if not isinstance(frame, Ready):
            raise InvalidMessage(f"the executor sent {type(frame).__name__} before it was ready")

    def close(self) -> None:
        """Close the executor's stdin (it exits at end of file) and remove the staged version."""
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise DLHubError("the local servable is not started (use it in a with block)")
        return process.stdin, process.stdout

    def _read_frame(self) -> Any:
        from dlhub.worker.protocol import HEADER_BYTES, body_length, decode_reply

        _, stdout = self._pipes()
        header = stdout.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            assert self._process is not None
            code = self._process.wait()
            raise DLHubError(f"the executor process exited (code {code}); its errors are above")
        body = stdout.read(body_length(header, max_bytes=self.max_message_bytes))
        return decode_reply(body)

    def call(
        self, inputs: Any, parameters: Mapping[str, Any] | None = None, method: str = "run"
    ) -> ExecReply:
        """Validate ``inputs`` as the registry does (``ValidationFailed``), then run them in the executor."""
        from dlhub.worker.protocol import ExecReply, ExecRequest, encode_frame

        check_inputs(self.document, method, inputs)
        stdin, _ = self._pipes()
        self._seq += 1
        request = ExecRequest(
            seq=self._seq,
            task_id=LOCAL_TASK_ID,
            servable=self.label,
            version_dir=str(self.version_dir),
            method=method,
            inputs=self.codec.encode_value(inputs),
            parameters=self.codec.encode_value(dict(parameters or {})),
        )
        stdin.write(encode_frame(request, max_bytes=self.max_message_bytes))
        stdin.flush()
        reply = self._read_frame()
        if not isinstance(reply, ExecReply) or reply.seq != self._seq:
            raise InvalidMessage("the executor answered out of turn")
        return reply

    def run_detailed(
        self, inputs: Any, parameters: Mapping[str, Any] | None = None, method: str = "run"
    ) -> dict[str, Any]:
        """Run once; the record a served run answers (arrays as lists, unless ``inputs`` held arrays: then,
        as over msgpack, they stay NumPy arrays)."""
        from dlhub.client.sdk import _holds_ndarray

        started = time.perf_counter()
        reply = self.call(inputs, parameters, method)
        timings = {
            "inference_ms": reply.inference_ms,
            "load_ms": reply.load_ms,
            "request_ms": (time.perf_counter() - started) * 1000.0,
        }
        record: dict[str, Any] = {"task_id": LOCAL_TASK_ID, "timings": timings}
        if not reply.ok:
            return record | {"state": "failed", "error": _error_dict(reply)}
        output = self.codec.decode_value(reply.output)
        if not _holds_ndarray(inputs):
            output = from_json(to_json(output))  # what a JSON response decodes to
        return record | {"state": "completed", "output": output}

    def test_vectors(self) -> dict[str, Any]:
        """Run the document's test vectors here; the report ``POST .../verify`` answers for a served one."""
        report: dict[str, Any] = {"servable": self.label}
        vectors = declared_vectors(self.document)
        if not vectors:
            return report | {"passed": True, "vectors": [], "note": NO_VECTORS_NOTE}
        outcomes: list[VectorOutcome] = []
        for vector in vectors:
            started = time.perf_counter()
            try:
                reply = self.call(vector.inputs, vector.parameters, vector.method)
            except ValidationFailed as exc:
                timings = {"request_ms": (time.perf_counter() - started) * 1000.0}
                outcomes.append(VectorOutcome(vector.index, False, f"invalid inputs: {exc.message}", timings))
                continue
            timings = {
                "inference_ms": reply.inference_ms,
                "load_ms": reply.load_ms,
                "request_ms": (time.perf_counter() - started) * 1000.0,
            }
            if not reply.ok:
                error = _error_dict(reply)
                message = f"run failed ({error['type']}: {error['message']})"
                outcomes.append(VectorOutcome(vector.index, False, message, timings))
                continue
            actual = from_json(to_json(self.codec.decode_value(reply.output)))
            outcomes.append(judge(vector, actual, timings))
        passed = all(outcome.passed for outcome in outcomes)
        return report | {"passed": passed, "vectors": [outcome.to_dict() for outcome in outcomes]}


def run_local(
    document_or_path: Mapping[str, Any] | str | Path,
    inputs: Any,
    *,
    parameters: Mapping[str, Any] | None = None,
    method: str = "run",
    base_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Start, run once, stop: the record of one local run (see ``LocalServable.run_detailed``)."""
    with LocalServable(document_or_path, base_dir=base_dir) as servable:
        return servable.run_detailed(inputs, parameters, method)


def verify_local(
    document_or_path: Mapping[str, Any] | str | Path, *, base_dir: str | Path | None = None
) -> dict[str, Any]:
    """The test vector report of a document, run on this machine (see ``LocalServable.test_vectors``)."""
    with LocalServable(document_or_path, base_dir=base_dir) as servable:
        return servable.test_vectors()
