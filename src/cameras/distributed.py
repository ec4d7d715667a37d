"""The same explain and evaluate jobs on Ray Data: one machine's cores, or a cluster.

What runs where (the functions are ``cameras.pipeline``'s, unchanged):

- reading and decoding (``decode_image`` / ``evaluation.load_item``): Ray tasks, on any
  node with a free CPU;
- the model: a pool of Ray actors (``map_batches`` with a callable class), each loading
  the model once, taking one GPU when the cluster has GPUs; rows arrive in batches of
  ``batch_size`` and same-size images share forward passes;
- explain's overlays and .npy bytes are rendered by Ray tasks after the model;
- results stream back to the driver, which puts them back in input order and is the only
  process that writes files.

Faults: a file that fails to decode comes back as an error result (reported by name,
skipped). An actor that dies is restarted and its unfinished batches run again (Ray's
``max_restarts`` / ``max_task_retries``); the driver keeps the first result of each input
and drops any repeat, so nothing is lost or written twice.

Ray is an optional dependency (``pip install 'cameras[ray]'``), imported only here and
only when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from .pipeline import (
    Explained,
    ImageExplainer,
    ImageResult,
    ImageTask,
    RecordScorer,
    Scored,
    decode_image,
    render_outputs,
)

INSTALL_HINT = "pip install 'cameras[ray]'"
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


class RayUnavailable(RuntimeError):
    """Ray (with Ray Data) is not installed; the message says how to install it."""


class RayJobError(RuntimeError):
    """The Ray job failed (a model that cannot load on a worker, a lost cluster...);
    the message is the cause's last line."""


def require_ray():
    """The ``ray`` module, or RayUnavailable saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we use
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


def _load_model_for_actor(name: str, weights: str | None, device: str):
    import torch

    from .models import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(name, weights=weights, device=device)


@dataclass(frozen=True)
class ExplainJob:
    """``cameras explain``'s settings, enough to rebuild its compute in an actor.

    layer: resolved by the driver, so every actor explains the same layer.
    target: a class index for every image, or None (each image's top-1).
    """

    model: str
    weights: str | None
    device: str
    method: str
    layer: str | None
    scales: tuple[int, ...] | None
    target: int | None
    cmap: str = "jet"
    alpha: float = 0.5
    rule: str | None = None  # CAMERAS's scale rule (None: the default)

    def build(self, batch_size: int) -> Callable[[list], list]:
        from .methods import build_method

        model, _, classes = _load_model_for_actor(self.model, self.weights, self.device)
        method = build_method(self.method, model, self.layer, self.scales, classes, self.rule)
        return ImageExplainer(method, self.target, batch_size)


@dataclass(frozen=True)
class EvaluateJob:
    """``cameras evaluate``'s settings (``evaluation.EvalSettings``, layer resolved)."""

    model: str
    weights: str | None
    device: str
    settings: object  # evaluation.EvalSettings

    def build(self, batch_size: int) -> Callable[[list], list]:
        from .evaluation import Evaluator

        model, prep, classes = _load_model_for_actor(self.model, self.weights, self.device)
        return RecordScorer(Evaluator(model, prep, classes, self.settings))


# --------------------------------------------------------------------------------------
# The stages, as Ray Data sees them: rows {"index": int, "payload": pickled object}
# --------------------------------------------------------------------------------------


def _row(index: int, value: object) -> dict:
    return {"index": index, "payload": pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)}


class _MapPayload:
    """A row stage: payload -> function(payload) (decoding, rendering).

    folder: the driver's working folder; where it exists (this machine, or a cluster whose
    machines share it) the stage runs there, so relative paths mean what they meant to
    the user and messages name files as the user wrote them."""

    def __init__(self, function: Callable, folder: str | None = None) -> None:
        self.function = function
        self.folder = folder

    def __call__(self, row: dict) -> dict:
        if self.folder and os.path.isdir(self.folder) and os.getcwd() != self.folder:
            os.chdir(self.folder)
        return _row(int(row["index"]), self.function(pickle.loads(row["payload"])))


class ModelActor:
    """One actor of the pool: builds the job's compute (the model) once, then turns each
    batch of loaded items into results, in order."""

    def __init__(self, job, batch_size: int, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.compute = job.build(batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(payload) for payload in batch["payload"]]
        results = self.compute(items)
        payloads = np.empty(len(results), dtype=object)
        payloads[:] = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
        return {"index": np.asarray(batch["index"]), "payload": payloads}


def _render_for_driver(result: ImageResult, cmap: str, alpha: float) -> Explained:
    """Explain's last stage: the files' bytes, and the result without the image pixels
    (the driver needs only the bytes)."""
    files = render_outputs(result, cmap, alpha) if result.error is None else None
    return replace(result, pixels=None), files


# --------------------------------------------------------------------------------------
# Connecting, sizing the pool, streaming
# --------------------------------------------------------------------------------------


def connect(address: str) -> bool:
    """Join Ray at ``address`` ('local': start an instance sized to this machine).
    Returns True when this call started Ray (the caller shuts it down). Ray already
    started in this process (tests, notebooks) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


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
    Raises RuntimeError if Ray returns fewer results than tasks.
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


def _stream(tasks, load, job, workers, batch_size, finish, device, max_threads) -> Iterator:
    if not tasks:
        return
    ray = require_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # results arrive in input order
    context.enable_progress_bars = False  # the command prints its own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    plan = plan_pool(ray.cluster_resources(), nodes, workers, device, max_threads)
    rows = [_row(index, task) for index, task in enumerate(tasks)]
    # Blocks are the decoding tasks' unit: about a batch each, at most 1000 in all.
    blocks = max(1, min(len(rows) // batch_size, 1000))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    # Decoding asks for half a core: it is short, and a request unlike the model actors'
    # keeps Ray Data from fusing it into them (fused, each actor would decode every
    # image itself, one after the other, between its model calls).
    dataset = dataset.map(_MapPayload(load, os.getcwd()), num_cpus=0.5)
    dataset = dataset.map_batches(
        ModelActor,
        fn_constructor_args=(job, batch_size, plan.threads_per_actor),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_gpus=plan.gpus_per_actor,
        num_cpus=1 if not plan.gpus_per_actor else None,
        # Ray Data's defaults for actor pools (max_restarts=-1, max_task_retries=-1) are
        # what we rely on: a dead actor is replaced and its unfinished batches run again.
    )
    if finish is not None:
        dataset = dataset.map(_MapPayload(finish))
    waiting: dict[int, object] = {}
    following = 0
    rows_back = iter(dataset.iter_rows())
    while True:
        try:
            row = next(rows_back)
        except StopIteration:
            break
        except ray.exceptions.RayError as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise RayJobError(f"the Ray job failed: {lines[-1] if lines else error}") from None
        index = int(row["index"])
        if index < following or index in waiting:
            continue  # a repeat (a retried batch): the first result stands
        waiting[index] = pickle.loads(row["payload"])
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    if following != len(tasks):
        raise RayJobError(f"Ray returned results for {following} of {len(tasks)} inputs")


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
    docstring); hand them to ``pipeline.save_explanations`` to write."""
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
    ``pipeline.save_records`` to store."""
    from .evaluation import load_item

    yield from stream_ray(
        records, partial(load_item, prep=prep), job, address, workers, batch_size, device=job.device
    )
