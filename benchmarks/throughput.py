"""Dataset-scale throughput: explain and evaluate, one at a time, local pipeline, local Ray.

    .venv/bin/python benchmarks/throughput.py [--images 42] [--scales 224,324,424]
        [--workers 1] [--batch-size 1] [--rounds 3] [--eval-images 6] [--no-ray]

The shipped photos (scikit-image, scikit-learn, matplotlib), repeated to --images JPEG
files, explained with CAMERAS on EfficientNet-Lite0 (the default model), four ways, in
--rounds rounds in alternating order (the best time of each is kept) so that machine
noise hits them alike:

  (d) floor     the same maps computed in a loop on tensors already in memory, nothing
                read or written: what any explain must at least spend;
  (a) one       ``cameras explain --workers 0 --batch-size 1``: read, compute, write,
                one image after the other;
  (b) pipeline  ``cameras explain`` (decoding in --workers processes, overlays in a
                render process, writing in a background thread, while the model
                computes);
  (c) ray       ``cameras explain --ray`` on a local Ray (started once, before the
                rounds); the time includes starting the actor and loading its model,
                and the time to the first result is also given.

Prints images/s and the ratio to (d), then where Ray's per-image time goes. Then
evaluate: seconds per image-method for the map and each metric (insertion and deletion
run their steps + 1 forward passes in batches of 16), and records/s one at a time,
with the pipeline and with Ray, against the same loop on tensors in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch
from photo_sets import bundled_photos
from PIL import Image

import cameras
from cameras.apps.evaluation import EvalSettings, Evaluator, load_item
from cameras.run.jobs import (
    ImageExplainer,
    decode_image,
    evaluate_local,
    explain_local,
    save_explanations,
)
from cameras.run.outputs import ImageWriter, image_tasks
from cameras.run.render import render_outputs


def shipped_photos() -> list[tuple[str, Image.Image]]:
    """The seven bundled photos (scikit-image, scikit-learn, matplotlib), as (name, image)."""
    return list(bundled_photos().items())


def write_images(folder: Path, count: int) -> list[Path]:
    photos = shipped_photos()
    paths = []
    for n in range(count):
        name, image = photos[n % len(photos)]
        path = folder / f"{n:03d}_{name}.jpg"
        image.save(path, quality=92)
        paths.append(path)
    return paths


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def explain_benchmark(args, model, prep, classes) -> dict:
    """Seconds per mode (the best of ``args.rounds`` rounds, run in alternating order so
    that a busy spell hits every mode alike), and Ray's start-up costs."""
    method = cameras.CAMERAS(model, scales=args.scales)
    times: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    ray_runs: list[dict] = []  # each Ray round's first-result and steady figures
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = write_images(folder, args.images)
        tasks = image_tasks(paths)
        tensors = [prep(cameras.load_image(p)) for p in paths]
        method(tensors[0][None])  # warm up the allocator and kernels

        def floor() -> None:
            for x in tensors:
                method(x[None])

        def run_local(workers: int, batch_size: int, background: bool) -> None:
            out = Path(tempfile.mkdtemp(dir=tmp))
            stream = explain_local(tasks, method, prep, None, workers, batch_size)
            writer = ImageWriter(out, method.name, paths)
            failures = save_explanations(stream, writer, background=background)
            assert failures == 0 and len(list(out.iterdir())) == 2 * len(paths)

        def run_ray() -> None:
            out = Path(tempfile.mkdtemp(dir=tmp))
            ray_runs.append(ray_explain(args, tasks, paths, prep, out))

        modes = {
            "floor": floor,
            "one": lambda: run_local(0, 1, background=False),
            "pipeline": lambda: run_local(args.workers, args.batch_size, background=True),
        }
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            extra["ray_init"] = time.perf_counter() - started
            modes["ray"] = run_ray
        try:
            for round_ in range(args.rounds):
                order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
                for name in order:
                    times.setdefault(name, []).append(timed(modes[name]))
                    print(f"  round {round_ + 1}: {name} {times[name][-1]:.1f} s", flush=True)
        finally:
            if not args.no_ray:
                ray.shutdown()
        found = {name: min(values) for name, values in times.items()}
        if ray_runs:  # the figures of the round whose time is reported
            extra.update(ray_runs[times["ray"].index(found["ray"])])
        found["rounds"] = times  # every round's seconds, for the report
        found.update(extra)
        found["overhead"] = per_image_costs(method, prep, paths[:7])
    return found


def ray_explain(args, tasks, paths, prep, out: Path) -> dict:
    """One explain run on the Ray started by the caller: the time to the first result
    (actor start and model load included)."""
    from cameras.run.ray import ExplainJob, explain_ray
    from cameras.session import SessionSpec

    job = ExplainJob(SessionSpec(device="cpu", scales=tuple(args.scales)), "cameras", None)
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def note(result, png, error) -> None:
        marks.setdefault("first", time.perf_counter() - started)
        assert error is None, error

    stream = explain_ray(tasks, job, prep, "local", None, args.batch_size)
    save_explanations(stream, ImageWriter(out, "cameras", paths), report=note)
    total = time.perf_counter() - started
    assert len(list(out.iterdir())) == 2 * len(paths)
    # Seconds per image once the pool runs: what a long dataset costs per image.
    return {"ray_first": marks["first"], "ray_steady": (total - marks["first"]) / (len(paths) - 1)}


def per_image_costs(method, prep, paths) -> dict[str, float]:
    """Seconds per image of the work around the model, measured here one by one."""
    costs = {"decode": 0.0, "render": 0.0, "pickle": 0.0, "bytes": 0.0}
    for path in paths:
        task = image_tasks([path])[0]
        started = time.perf_counter()
        item = decode_image(task, prep)
        costs["decode"] += time.perf_counter() - started
        result = ImageExplainer(method, None)([item])[0]
        started = time.perf_counter()
        render_outputs(result)
        costs["render"] += time.perf_counter() - started
        started = time.perf_counter()
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in (task, item, result)]
        for blob in blobs:
            pickle.loads(blob)
        costs["pickle"] += time.perf_counter() - started
        costs["bytes"] += sum(len(b) for b in blobs)
    return {k: v / len(paths) for k, v in costs.items()}


# ------------------------------------------------------------------------------ evaluate


def evaluate_benchmark(args, model, prep, classes) -> dict:
    from cameras.apps.datasets import Record
    from cameras.apps.metrics import deletion, energy_pointing_game, insertion, map_density
    from cameras.apps.metrics import pointing_game as pointing
    from cameras.core.images import resize_map

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_images(folder, args.eval_images)
        records = []
        for path in paths:
            width, height = Image.open(path).size
            box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
            records.append(Record(path.name, path, {int(_top1(model, prep, path)): (box,)}))
        items = [load_item(r, prep) for r in records]
        split = {k: 0.0 for k in ("map", "pointing+energy", "density", "insertion", "deletion")}
        methods = {
            "cameras": cameras.CAMERAS(model, scales=args.scales),
            "gradcam": cameras.GradCAM(model),
        }
        for method in methods.values():
            for item in items:
                x = item.x[None]
                target = [next(iter(item.record.objects))]
                started = time.perf_counter()
                maps = method(x, targets=target).maps
                split["map"] += time.perf_counter() - started
                started = time.perf_counter()
                full = [resize_map(maps[0], item.image_size[1], item.image_size[0])]
                boxes = [item.record.objects[target[0]]]
                pointing(full, boxes)
                energy_pointing_game(full, boxes)
                split["pointing+energy"] += time.perf_counter() - started
                started = time.perf_counter()
                map_density(model, x, maps, target, prep, 16)
                split["density"] += time.perf_counter() - started
                started = time.perf_counter()
                insertion(model, x, maps, target, args.steps, prep, 16)
                split["insertion"] += time.perf_counter() - started
                started = time.perf_counter()
                deletion(model, x, maps, target, args.steps, prep, 16)
                split["deletion"] += time.perf_counter() - started
        count = len(items) * len(methods)
        out["split"] = {k: v / count for k, v in split.items()}

        settings = EvalSettings(
            methods=("cameras",), steps=args.eval_steps, scales=tuple(args.scales)
        )
        evaluator = Evaluator(model, prep, classes, settings)
        out["eval_floor"] = timed(lambda: [evaluator([item]) for item in items])
        out["eval_one"] = timed(lambda: list(evaluate_local(records, prep, evaluator, 0, 1)))
        out["eval_pipeline"] = timed(
            lambda: list(evaluate_local(records, prep, evaluator, args.workers, args.batch_size))
        )
        if not args.no_ray:
            import ray

            from cameras.run.ray import EvaluateJob, evaluate_ray
            from cameras.session import SessionSpec

            job = EvaluateJob(SessionSpec(device="cpu"), settings)
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            try:
                stream = evaluate_ray(records, job, prep, "local", None, args.batch_size)
                out["eval_ray"] = timed(lambda: list(stream))
            finally:
                ray.shutdown()
        out["eval_records"] = len(records)
    return out


def _top1(model, prep, path) -> int:
    with torch.no_grad():
        return int(model(prep(cameras.load_image(path))[None]).argmax())


# ------------------------------------------------------------------------------ printing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=42)
    parser.add_argument(
        "--scales", type=lambda t: [int(s) for s in t.split(",")], default=[224, 324, 424]
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--eval-images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100, help="insertion/deletion steps")
    parser.add_argument("--eval-steps", type=int, default=20, help="steps in the eval runs")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    model, prep, classes = cameras.load_model()
    print(
        f"explain: {args.images} photos, CAMERAS scales {args.scales}, EfficientNet-Lite0, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"--workers {args.workers} --batch-size {args.batch_size}"
    )
    found = explain_benchmark(args, model, prep, classes)
    floor = found["floor"]
    rows = [("(d) floor: maps on tensors in memory", "floor")]
    rows += [("(a) one at a time", "one"), ("(b) local pipeline", "pipeline")]
    if "ray" in found:
        rows.append(("(c) local Ray (actor start and model load included)", "ray"))
    print("| run | images/s | x floor |\n|---|---|---|")
    for label, key in rows:
        rate = args.images / found[key]
        print(f"| {label} | {rate:.2f} | {floor / found[key]:.2f} |")
    if "ray" in found:
        per_floor = floor / args.images
        overhead = (found["ray"] - floor) / args.images
        print(
            f"\nRay: ray.init {found['ray_init']:.1f} s (once, not in the table); first "
            f"result after {found['ray_first']:.1f} s (actor start, model load, first render "
            f"tasks); over the whole run {overhead * 1000:+.0f} ms/image against the "
            f"floor's {per_floor * 1000:.0f} ms; after the first result "
            f"{found['ray_steady'] * 1000:.0f} ms/image ({per_floor / found['ray_steady']:.2f}x "
            "floor); rounds: " + ", ".join(f"{t:.1f} s" for t in found["rounds"]["ray"])
        )
    cost = found["overhead"]
    print(
        f"Work around the model per image (measured alone): decode+preprocess "
        f"{cost['decode'] * 1000:.0f} ms, overlay+PNG+npy {cost['render'] * 1000:.0f} ms, "
        f"pickling task+item+result {cost['pickle'] * 1000:.1f} ms for "
        f"{cost['bytes'] / 1e6:.1f} MB (Ray moves these through its object store)."
    )

    print(f"\nevaluate: {args.eval_images} photos, one class each, cameras and gradcam")
    ev = evaluate_benchmark(args, model, prep, classes)
    print("| part | seconds per image-method |\n|---|---|")
    for part, seconds in ev["split"].items():
        note = f" ({args.steps + 1} forward passes, batches of 16)" if "ion" in part else ""
        print(f"| {part}{note} | {seconds:.3f} |")
    n = ev["eval_records"]
    print(f"\nevaluate runs, cameras only, {args.eval_steps} steps, {n} records:")
    print("| run | records/s | x floor |\n|---|---|---|")
    for label, key in (
        ("floor: Evaluator on items in memory", "eval_floor"),
        ("one at a time", "eval_one"),
        ("local pipeline", "eval_pipeline"),
        ("local Ray (actor start and model load included)", "eval_ray"),
    ):
        if key in ev:
            print(f"| {label} | {n / ev[key]:.2f} | {ev['eval_floor'] / ev[key]:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"explain": found, "evaluate": ev}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
