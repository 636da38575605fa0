"""The original A&E captioner, LAVIS ``blip_caption``/``base_coco``, behind the Captioner interface.

LAVIS pins transformers<4.27, which cannot share an environment with diffusers, so ``make lavis`` builds
``.venv-lavis`` and LavisCaptioner runs ``fidelity_lib/lavis_worker.py`` there as a subprocess: one JSON line per batch
of image paths in, one line of captions (or per-image errors) out, in order (protocol in the worker's docstring).
Images given as PIL objects are written to a temporary folder as PNG first. The worker starts on the first batch;
every read waits at most a timeout, after which the worker is killed; a worker that dies mid-batch is started again
and the batch sent once more; ``close()``, ``with``, garbage collection and interpreter exit all stop it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fidelity_lib.models import WeightsNotFoundError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
LAVIS_VENV = PACKAGE_ROOT.parent / ".venv-lavis"
WORKER_SCRIPT = PACKAGE_ROOT / "lavis_worker.py"
STDERR_TAIL = 4000  # characters of the worker's stderr quoted in an error


class LavisWorkerError(RuntimeError):
    """The LAVIS worker failed; the message is the worker's own, or the tail of its stderr."""


class LavisWorkerTimeout(LavisWorkerError, TimeoutError):
    """The worker did not answer in time and was killed."""


class LavisEnvironmentError(LavisWorkerError, FileNotFoundError):
    """``.venv-lavis`` (or the given interpreter) is missing."""


class LavisWeightsNotFoundError(LavisWorkerError, WeightsNotFoundError):
    """LAVIS's checkpoint or tokenizer is not in the local caches; the message says what to download and where."""


class LavisImageError(LavisWorkerError, ValueError):
    """The worker could not read some of the images it was given."""


@dataclass(frozen=True)
class CaptionResult:
    """One image's outcome: its caption, or the reason the worker could not read it."""

    path: str
    caption: str | None = None
    error: str | None = None


def _stop(process: subprocess.Popen, log_dir: tempfile.TemporaryDirectory) -> None:
    """Close the worker's input (its cue to exit), kill it if it is still there after 5 s, remove its log folder."""
    try:
        process.stdin.close()
    except OSError:  # the pipe is already broken: the worker is gone
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log_dir.cleanup()


def _pump(stream, lines: queue.Queue) -> None:
    """Move the worker's stdout lines into a queue, then None at end of file (and close the pipe)."""
    with stream:
        for line in stream:
            lines.put(line)
    lines.put(None)


def worker_environment() -> dict[str, str]:
    """This process's environment for the worker, offline, without the Python paths of the book's interpreter."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


class _Worker:
    """One running worker process: send a line, read a line with a timeout, the tail of its stderr."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.log_dir = tempfile.TemporaryDirectory(prefix="lavis-worker-")
        self.log_path = Path(self.log_dir.name) / "stderr.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, encoding="utf-8", env=env
            )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(self.process.stdout, self.lines), daemon=True).start()
        self.stop = weakref.finalize(self, _stop, self.process, self.log_dir)

    def send(self, message: dict) -> bool:
        """Write one request line; False when the worker is gone."""
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def receive(self, timeout: float) -> dict | None:
        """The next reply, None when the worker exited; kills it and raises LavisWorkerTimeout after ``timeout`` s."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            self.process.wait()
            raise LavisWorkerTimeout(f"The LAVIS worker sent nothing for {timeout:.0f} s and was killed.{self.stderr_tail()}") from None
        if line is None:
            return None
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise LavisWorkerError(f"The LAVIS worker wrote a line that is not JSON: {line[:200]!r}{self.stderr_tail()}") from None

    def stderr_tail(self) -> str:
        """The end of what the worker wrote to stderr, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        return f"\nworker stderr (last {STDERR_TAIL} characters):\n{text[-STDERR_TAIL:]}" if text else ""


class LavisCaptioner:
    """LAVIS ``blip_caption``/``base_coco`` captions from a worker in ``.venv-lavis`` (``make lavis``).

    ``random_weights_seed`` builds the model from its config with random weights (plumbing tests only). The worker
    starts on the first batch and is waited for ``start_timeout`` seconds; a batch may take ``image_timeout``
    seconds per image.
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        random_weights_seed: int | None = None,
        python: str | os.PathLike = LAVIS_VENV / "bin" / "python",
        worker: str | os.PathLike = WORKER_SCRIPT,
        start_timeout: float = 900.0,
        image_timeout: float = 120.0,
    ):
        self.python, self.worker_script = Path(python), Path(worker)
        if not self.python.exists():
            raise LavisEnvironmentError(
                f"The LAVIS environment is missing ({self.python} not found): run `make lavis` in {PACKAGE_ROOT.parent} "
                f"to build .venv-lavis, or use the default transformers captioner (captioner='transformers')."
            )
        self.device, self.random_weights_seed = device, random_weights_seed
        self.start_timeout, self.image_timeout = start_timeout, image_timeout
        weights = "" if random_weights_seed is None else f" random-weights(seed={random_weights_seed})"
        self.name = f"lavis blip_caption base_coco{weights} (worker .venv-lavis)"
        self._worker: _Worker | None = None
        self._request_id = 0

    def command(self) -> list[str]:
        """The worker's command line."""
        options = ["--device", self.device] if self.device else []
        if self.random_weights_seed is not None:
            options += ["--random-weights", "--seed", str(self.random_weights_seed)]
        return [str(self.python), str(self.worker_script), *options]

    @property
    def pid(self) -> int | None:
        """The running worker's process id, or None before the first batch and after close()."""
        return self._worker.process.pid if self._worker is not None else None

    def _start(self) -> _Worker:
        """Start the worker and wait until it says it is ready."""
        worker = _Worker(self.command(), worker_environment())
        reply = worker.receive(self.start_timeout)
        if reply is not None and reply.get("ready"):
            return worker
        tail = worker.stderr_tail()
        worker.stop()
        if reply is None:
            raise LavisWorkerError(f"The LAVIS worker exited while loading ({' '.join(self.command())}).{tail}")
        error = LavisWeightsNotFoundError if reply.get("kind") == "missing_files" else LavisWorkerError
        raise error(f"The LAVIS worker could not load {self.name}:\n{reply.get('fatal', reply)}")

    def _exchange(self, paths: list[str]) -> dict | None:
        """Send one batch to the (started) worker and return its reply, or None when the worker died on the way."""
        if self._worker is None or self._worker.process.poll() is not None:
            self.close()
            self._worker = self._start()
        self._request_id += 1
        if not self._worker.send({"id": self._request_id, "paths": paths}):
            return None
        reply = self._worker.receive(self.image_timeout * max(len(paths), 1))
        if reply is not None and reply.get("id") != self._request_id:
            raise LavisWorkerError(f"The LAVIS worker answered request {reply.get('id')} instead of {self._request_id}: {reply}")
        return reply

    def caption_paths(self, paths: list[str | os.PathLike]) -> list[CaptionResult]:
        """One result per path, in order; a worker that dies mid-batch is restarted and the batch sent once more."""
        paths = [str(Path(path).resolve()) for path in paths]
        if not paths:
            return []
        reply = self._exchange(paths)
        if reply is None:  # the worker died on this batch: once more, with a fresh one
            self.close()
            reply = self._exchange(paths)
        if reply is None:
            tail = self._worker.stderr_tail()
            self.close()
            raise LavisWorkerError(f"The LAVIS worker died on a batch of {len(paths)} image(s), restarted, and died again.{tail}")
        if "error" in reply:
            raise LavisWorkerError(f"The LAVIS worker failed on a batch of {len(paths)} image(s):\n{reply['error']}")
        if len(reply["results"]) != len(paths):
            raise LavisWorkerError(f"The LAVIS worker returned {len(reply['results'])} results for {len(paths)} images.")
        return [CaptionResult(path, item.get("caption"), item.get("error")) for path, item in zip(paths, reply["results"])]

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image (written to a temporary folder as PNG and sent as paths)."""
        with tempfile.TemporaryDirectory(prefix="lavis-images-") as folder:
            paths = [Path(folder) / f"{index}.png" for index in range(len(images))]
            for image, path in zip(images, paths):
                image.save(path)
            results = self.caption_paths(paths)
        failed = [f"{Path(r.path).name}: {r.error}" for r in results if r.error is not None]
        if failed:
            raise LavisImageError(f"The LAVIS worker could not read {len(failed)} image(s): {'; '.join(failed)}")
        return [result.caption for result in results]

    def close(self) -> None:
        """Stop the worker (it starts again on the next batch)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __enter__(self) -> LavisCaptioner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
