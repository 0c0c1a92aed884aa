"""What keeps ``lsdseg serve`` safe to expose: refusals answered in one line, and a server
that does not outlive the command.

PyTriton sends a client the Python traceback of an error (the server's paths in it) as HTTP
500, and tritonserver can outlive a ``lsdseg serve`` that was killed, holding the ports.
:func:`answer_errors_in_one_line` and :func:`watch_children` fix both; the serving command
calls them (:mod:`lsdseg.cli.serve_cmd`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# a process of its own that stops the servers of a `lsdseg serve` that was killed (SIGKILL
# leaves no chance to stop them, and tritonserver's death signal does not reliably end it)
_WATCHDOG = """
import os, signal, sys, time
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
def named(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tritonserver" in f.read()
    except OSError:
        return False
while os.getppid() == parent and any(alive(p) for p in pids):
    time.sleep(0.5)
left = [p for p in pids if alive(p) and named(p)]
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    for p in left:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    end = time.monotonic() + wait
    while time.monotonic() < end and any(alive(p) for p in left):
        time.sleep(0.2)
"""


# PyTriton's model (run by Triton's Python backend, from a copy of pytriton/proxy/model.py)
# raises the error of a request as an exception: Triton answers HTTP 500 with its traceback.
# Answered as an error response instead: HTTP 400 for a refusal, 500 for an internal error,
# the one line of cli.server.client_message either way.
_IF_ERROR = (
    b"                if triton_responses_or_error is not None and "
    b"isinstance(triton_responses_or_error, Exception):\n"
)
_RAISES = _IF_ERROR + b"                    raise triton_responses_or_error\n"
# an error before the request reached lsdseg (PyTriton could not read its tensors)
_EXCEPT = (
    b"        except Exception:\n"
    b"            msg = traceback.format_exc()\n"
    b'            raise pb_utils.TritonModelException(f"Model execute error: {msg}") from None'
)
_EXCEPT_ANSWERS = (
    b"        except Exception as e:\n"
    b"            LOGGER.debug(traceback.format_exc())\n"
    b"            message = (str(e).strip().splitlines() or [type(e).__name__])[0]\n"
    b"            error = pb_utils.TritonError(f'the request cannot be read: {message}', "
    b"pb_utils.TritonError.INVALID_ARG)\n"
    b"            return [pb_utils.InferenceResponse(error=error) for _ in triton_requests]"
)
_ANSWERS = _IF_ERROR + (
    b"                    message = str(triton_responses_or_error)\n"
    b"                    code = (pb_utils.TritonError.INTERNAL if message.startswith("
    b"'internal error') else pb_utils.TritonError.INVALID_ARG)\n"
    b"                    return [pb_utils.InferenceResponse(error=pb_utils.TritonError("
    b"message, code)) for _ in triton_requests]\n"
)


def answer_errors_in_one_line() -> bool:
    """Make the refusals of ``lsdseg serve`` HTTP 400 (gRPC INVALID_ARGUMENT) answers of one
    line: :class:`~lsdseg.cli.server.ClientErrors` formats them, and the model file PyTriton
    deploys answers them instead of raising. False when this PyTriton's model file differs
    from the one this was written for (0.7): refusals then stay HTTP 500, still one line."""
    import pytriton.proxy.inference as handler
    from pytriton.models.model import Model

    from lsdseg.cli.server import ClientErrors

    handler.traceback = ClientErrors()
    source = (Path(handler.__file__).parent / "model.py").read_bytes()
    if _RAISES not in source or _EXCEPT not in source:
        return False
    patched = source.replace(_RAISES, _ANSWERS).replace(_EXCEPT, _EXCEPT_ANSWERS)
    files = Model.get_proxy_model_files
    generate = Model.generate_model

    def get_proxy_model_files(self: Model) -> dict[str, bytes]:
        found = files(self)
        return {k: patched if k.endswith("/model.py") else v for k, v in found.items()}

    def generate_model(self: Model, model_repository: Path) -> None:
        generate(self, model_repository)
        for path in Path(model_repository).glob("*/*/model.py"):
            path.write_bytes(patched)

    Model.get_proxy_model_files = get_proxy_model_files  # type: ignore[method-assign]
    Model.generate_model = generate_model  # type: ignore[method-assign]
    return True


def child_pids(name: str) -> list[int]:
    """The PIDs of this process's children whose command is ``name`` (from /proc)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        if comm == name and len(fields) > 1 and int(fields[1]) == me:
            found.append(int(stat.parent.name))
    return found


def watch_children(name: str) -> subprocess.Popen | None:
    """Tie the life of this process's ``name`` children to this process: a watchdog of its
    own session stops them (SIGTERM, then SIGKILL after 10 s) once this process is gone, however
    it ended (a SIGKILL too). None when there are no such children (or no /proc)."""
    pids = child_pids(name)
    if not pids:
        return None
    cmd = [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *map(str, pids)]
    return subprocess.Popen(
        cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
