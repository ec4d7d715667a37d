"""The same explain and evaluate jobs on Ray: one machine's cores, or a cluster.

What runs where (the functions are ``cameras.run``'s, unchanged):

- reading and decoding (``decode_image`` / ``evaluation.load_item``): Ray tasks, on any
  node with a free CPU;
- the model: a pool of Ray actors, each loading the model once, taking one GPU when the
  cluster has GPUs; each call computes a batch of ``batch_size`` decoded images (same-size
  images share forward passes);
- explain's overlays and .npy bytes: Ray tasks after the model;
- the driver submits a bounded window of batches (``WINDOW_PER_ACTOR`` per actor, so at
  most that many decoded images wait in memory), takes the results back in input order
  and is the only process that writes files.

It is Ray Core (tasks, actors, object references), not Ray Data: the job is a fixed list
of inputs through three fixed stages, which Ray Core expresses directly; Ray Data's
executor and its helper actors (statistics, autoscaling, actor locations) added CPU and
start-up time to it on a small machine and nothing it needs (docs/scale-out.md).

Faults: a file that fails to decode comes back as an error result (reported by name,
skipped). An actor that dies is restarted by Ray and the calls it had not finished run
again (``max_restarts=-1``, ``max_task_retries=-1``); a decoding or rendering task whose
worker dies is retried (Ray's default). Every result is fetched once through its own
object reference, so nothing is lost or written twice.

Ray is an optional dependency (``pip install 'cameras[ray]'``), imported only here and
only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

from ..session import SessionSpec
from .items import Explained, ImageResult, ImageTask, Scored
from .jobs import ImageExplainer, RecordScorer, decode_image
from .render import render_outputs

INSTALL_HINT = "pip install 'cameras[ray]'"
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


class RayUnavailable(RuntimeError):
    """Ray is not installed; the message says how to install it."""


class RayJobError(RuntimeError):
    """The Ray job failed (a model that cannot load on a worker, a lost cluster...);
    the message is the cause's last line."""


def require_ray():
    """The ``ray`` module, or RayUnavailable saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"Ray is not installed; {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> str:
    """'local' (a Ray instance for this run), 'auto', 'ray://HOST:PORT' or 'HOST:PORT'."""
    if not _ADDRESS.match(address):
        raise ValueError(
            f"{address!r} is not a Ray address (auto, ray://HOST:PORT or HOST:PORT); "
            "for a local Ray put --ray last or write --ray local"
        )
    return address


# --------------------------------------------------------------------------------------
# Jobs: what an actor needs to rebuild the model and the compute function
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainJob:
    """``cameras explain``'s settings, enough to rebuild its compute in an actor.

    spec: the driver's ``SessionSpec`` (its layer resolved by the driver, so every actor
    explains the same layer; the actors' device); target: a class index for every
    image, None (each image's top-1), or a ``PhotoTarget`` (a box, mask or set).
    """

    spec: SessionSpec
    method: str
    target: object
    cmap: str = "jet"
    alpha: float = 0.5

    @property
    def device(self) -> str:
        return self.spec.device or "auto"

    def build(self, batch_size: int) -> Callable[[list], list]:
        session = self.spec.build()
        return ImageExplainer(session.method(self.method), self.target, batch_size)


@dataclass(frozen=True)
class EvaluateJob:
    """``cameras evaluate``'s settings: the session's spec and ``evaluation.EvalSettings``."""

    spec: SessionSpec
    settings: object  # evaluation.EvalSettings

    @property
    def device(self) -> str:
        return self.spec.device or "auto"

    def build(self, batch_size: int) -> Callable[[list], list]:
        from ..apps.evaluation import Evaluator

        return RecordScorer(Evaluator(self.spec.build(), settings=self.settings))


# --------------------------------------------------------------------------------------
# The stages: a task function, the model actor, explain's last step
# --------------------------------------------------------------------------------------


def _in_folder(function: Callable, folder: str | None, value: object) -> object:
    """A Ray task's body: ``function(value)`` (decoding, rendering).

    folder: the driver's working folder; where it exists (this machine, or a cluster whose
    machines share it) the task runs there, so relative paths mean what they meant to the
    user and messages name files as the user wrote them."""
    if folder and os.path.isdir(folder) and os.getcwd() != folder:
        os.chdir(folder)
    return function(value)


class ModelActor:
    """One actor of the pool: builds the job's compute (the model) once, then turns each
    batch of loaded items into results, in order."""

    def __init__(self, job, batch_size: int, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.compute = job.build(batch_size)

    def compute_batch(self, *items) -> object:
        results = self.compute(list(items))
        # One object reference per result (``num_returns``); Ray wants the lone value,
        # not a list of one, when there is one.
        return results[0] if len(results) == 1 else tuple(results)


def _render_for_driver(result: ImageResult, cmap: str, alpha: float) -> Explained:
    """Explain's last stage: the files' bytes, and the result without the image pixels
    (the driver needs only the bytes)."""
    files = render_outputs(result, cmap, alpha) if result.error is None else None
    return replace(result, pixels=None), files


# --------------------------------------------------------------------------------------
# Connecting, sizing the pool, streaming
# --------------------------------------------------------------------------------------


# How long --ray HOST:PORT may take to answer (--ray-timeout's default, seconds).
RAY_TIMEOUT_S = 30.0


def check_reachable(address: str, timeout: float = RAY_TIMEOUT_S) -> None:
    """RayJobError, in one line, when nothing answers at a HOST:PORT or ray://HOST:PORT
    address within ``timeout`` seconds. Ray's own join waits minutes at an address where
    nothing listens; a TCP connection tells in at most ``timeout``. ('local' and 'auto'
    are not network addresses: nothing to check.)"""
    import socket

    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except TimeoutError:
        raise RayJobError(
            f"--ray {address}: no answer within {timeout:g} s (--ray-timeout); is the Ray "
            "head running and the port open?"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise RayJobError(
            f"--ray {address}: cannot connect ({reason}); is the Ray head running there?"
        ) from None


def connect(address: str) -> bool:
    """Join Ray at ``address`` ('local': start an instance sized to this machine).
    Returns True when this call started Ray (the caller shuts it down). Ray already
    started in this process (tests, notebooks) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    with _stop_signals_kept():
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return True


@contextlib.contextmanager
def _stop_signals_kept() -> Iterator[None]:
    """Put back the SIGTERM / SIGHUP handlers that ``ray.init`` replaces with its own (which
    exit at once with the signal's number): the caller's handlers (``cameras.cli``'s stop
    a run as Ctrl-C does) then stop the stream, whose clean-up shuts Ray down."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {name: signal.getsignal(getattr(signal, name)) for name in names}
    try:
        yield
    finally:
        for name, handler in before.items():
            if handler is not None:
                signal.signal(getattr(signal, name), handler)


@dataclass(frozen=True)
class PoolPlan:
    """How the model actors are placed: how many, and what each asks of the cluster."""

    actors: int
    gpus_per_actor: float
    threads_per_actor: int | None  # CPU actors share the cores; None: Ray's default


def plan_pool(
    resources: dict, nodes: int, workers: int | None, device: str, max_threads: int | None = None
) -> PoolPlan:
    """One actor per GPU when the cluster has GPUs (unless --device cpu), otherwise one
    per machine using its share of the cores (at most ``max_threads`` torch threads);
    ``workers`` overrides the count."""
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    actors = workers or (gpus if gpus else max(1, nodes))
    if gpus:
        return PoolPlan(actors, 1.0, None)
    threads = max(1, int(resources.get("CPU", 1)) // actors)
    return PoolPlan(actors, 0.0, min(threads, max_threads) if max_threads else threads)


def stream_ray(
    tasks: Sequence,
    load: Callable,
    job,
    address: str = "local",
    workers: int | None = None,
    batch_size: int = 1,
    finish: Callable | None = None,
    device: str = "auto",
) -> Iterator:
    """Results of the job's compute for every task, in task order, computed on Ray.

    load: task -> item (Ray tasks); job.build(batch_size): the actors' compute;
    finish: result -> what the driver receives (Ray tasks), or None.
    Raises RayJobError when a task or actor fails for good (a model that cannot load).
    """
    started = connect(address)
    # On this machine, actors use no more threads than this process would (a user's
    # OMP_NUM_THREADS / torch setting holds); on a cluster, each machine's cores.
    max_threads = torch_threads() if address == "local" else None
    try:
        yield from _stream(tasks, load, job, workers, batch_size, finish, device, max_threads)
    finally:
        if started:
            require_ray().shutdown()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# Batches submitted per actor and not yet taken back by the driver: one computing, one
# waiting with its images decoded, one being decoded or rendered. Fewer and an actor
# waits for the driver; more only holds more decoded images in memory.
WINDOW_PER_ACTOR = 3


def _stream(tasks, load, job, workers, batch_size, finish, device, max_threads) -> Iterator:
    if not tasks:
        return
    ray = require_ray()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    plan = plan_pool(ray.cluster_resources(), nodes, workers, device, max_threads)
    actor_class = ray.remote(ModelActor).options(
        num_cpus=1,  # the actor's own Python thread, GPU or not
        num_gpus=plan.gpus_per_actor,
        max_restarts=-1,  # a dead actor's process is replaced...
        max_task_retries=-1,  # ...and the calls it had not finished run again
    )
    actors = [
        actor_class.remote(job, batch_size, plan.threads_per_actor) for _ in range(plan.actors)
    ]
    # Decoding and drawing ask for half a core each: they are short, and on a machine
    # whose cores the actors hold they share the rest.
    stage = ray.remote(_in_folder).options(num_cpus=0.5)
    folder = os.getcwd()
    load_ref = ray.put(load)
    finish_ref = ray.put(finish) if finish is not None else None
    submitted: deque[tuple[int, list]] = deque()  # (actor, result references), input order

    def submit(batch: Sequence) -> tuple[int, list]:
        """Decode, compute and (explain) render one batch: the actor it went to (the one
        with the fewest batches not yet taken back) and one reference per result. Nothing
        waits here: Ray runs each step when its input is ready."""
        chosen = min(range(len(actors)), key=[actor for actor, _ in submitted].count)
        loaded = [stage.remote(load_ref, folder, task) for task in batch]
        results = actors[chosen].compute_batch.options(num_returns=len(batch)).remote(*loaded)
        results = [results] if len(batch) == 1 else list(results)
        if finish_ref is not None:
            results = [stage.remote(finish_ref, None, result) for result in results]
        return chosen, results

    batches = [tasks[start : start + batch_size] for start in range(0, len(tasks), batch_size)]
    window = WINDOW_PER_ACTOR * len(actors)
    next_batch = 0
    try:
        while submitted or next_batch < len(batches):
            while len(submitted) < window and next_batch < len(batches):
                submitted.append(submit(batches[next_batch]))
                next_batch += 1
            _, results = submitted.popleft()
            for reference in results:
                yield _fetch(ray, reference)
    finally:
        for actor in actors:
            ray.kill(actor)  # the pool is this run's; its models go with it


def _fetch(ray, reference) -> object:
    """The value behind a reference, or RayJobError with the cause's last line."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise RayJobError(f"the Ray job failed: {lines[-1] if lines else error}") from None


# --------------------------------------------------------------------------------------
# The two jobs
# --------------------------------------------------------------------------------------


def explain_ray(
    tasks: Sequence[ImageTask],
    job: ExplainJob,
    prep,
    address: str = "local",
    workers: int | None = None,
    batch_size: int = 1,
) -> Iterator[Explained]:
    """``(result, files)`` per image, in input order, computed on Ray (see the module
    docstring); hand them to ``run.jobs.save_explanations`` to write."""
    yield from stream_ray(
        tasks,
        partial(decode_image, prep=prep),
        job,
        address,
        workers,
        batch_size,
        finish=partial(_render_for_driver, cmap=job.cmap, alpha=job.alpha),
        device=job.device,
    )


def evaluate_ray(
    records: Sequence,
    job: EvaluateJob,
    prep,
    address: str = "local",
    workers: int | None = None,
    batch_size: int = 1,
) -> Iterator[Scored]:
    """``(item, rows)`` per record, in record order, computed on Ray; hand them to
    ``run.jobs.save_records`` to store."""
    from ..apps.evaluation import load_item

    yield from stream_ray(
        records, partial(load_item, prep=prep), job, address, workers, batch_size, device=job.device
    )
