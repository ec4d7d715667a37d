"""Issue 23: nothing lost, nothing left behind. Threads on one session, atomic outputs,
clean stops on SIGTERM / SIGHUP, and one line for every failure."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyNet, seeded
from PIL import Image

import cameras

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------- threads on one session


def _in_threads(count: int, call, inputs: list) -> list:
    """``call(inputs[i])`` in ``count`` threads started together; results in input order."""
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = call(inputs[i])
        except Exception as error:  # noqa: BLE001 - compared below
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_eight_threads_on_one_session_give_the_single_threaded_maps():
    """Before: "layer ... ran 2 times in one forward pass" (the threads shared the hooks)."""
    torch.manual_seed(0)
    session = cameras.Session(seeded("resnet18", 4).eval(), None, layer="layer4", scales=[64, 96])
    inputs = [torch.randn(1, 3, 64, 64 + 8 * i) for i in range(8)]
    for method in ("cameras", "gradcam"):
        alone = [session.explain(x, method).maps for x in inputs]
        together = _in_threads(8, lambda x, m=method: session.explain(x, m).maps, inputs)
        for one, many in zip(alone, together, strict=True):
            assert not isinstance(many, Exception), many
            assert torch.allclose(one, many, atol=1e-6)


def test_eight_threads_on_a_training_model_leave_it_training_and_match():
    """eval_mode entered by several threads at once: each thread runs in eval mode, and the
    model's own flags come back when the last one leaves."""
    model = TinyNet().train()
    method = cameras.CAMERAS(model, layer="features", scales=[32, 48])
    inputs = [torch.randn(2, 3, 40, 40) for _ in range(8)]
    alone = [method(x).maps for x in inputs]
    together = _in_threads(8, lambda x: method(x).maps, inputs)
    for one, many in zip(alone, together, strict=True):
        assert not isinstance(many, Exception), many
        assert torch.allclose(one, many, atol=1e-6)
    assert all(module.training for module in model.modules())


def test_automatic_layer_found_in_threads_is_the_single_threaded_one():
    model = seeded("resnet18", 4).eval()
    names = _in_threads(8, lambda _: cameras.CAMERAS(model).layer_name, [None] * 8)
    assert names == ["layer4"] * 8


# ------------------------------------------------------------- SIGTERM / SIGHUP


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc's children lists)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for PID 1 to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize(
    ("stop", "engine"),
    [(signal.SIGTERM, "local"), (signal.SIGHUP, "local"), (signal.SIGTERM, "ray")],
)
def test_a_stop_signal_leaves_no_process_behind(tmp_path, chelsea, stop, engine):
    """Before: SIGTERM killed the main process silently and left the decoding workers and
    the render process running under PID 1 (with --ray: Ray's own handler, exit 15)."""
    if engine == "ray":
        pytest.importorskip("ray")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        chelsea.resize((160 + 8 * i, 120)).save(photos / f"cat{i:02d}.png")
    argv = [sys.executable, "-m", "cameras", "explain", str(photos), "--out", str(tmp_path)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    errors = tmp_path / "stderr.txt"  # a file: orphans holding a pipe would block a read
    with errors.open("w") as stderr:
        child = subprocess.Popen(
            [*argv, "--scales", "224,256", *(["--ray"] if engine == "ray" else [])],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=environment,
        )
    # Wait for the first image written: decoding workers and the render process are up.
    first = child.stdout.readline()
    assert "top-5" in first, errors.read_text()
    family = _descendants(child.pid)
    assert len(family) >= 3  # two decoding workers and the render process at least
    child.send_signal(stop)
    code = child.wait(timeout=60)
    child.stdout.close()
    err = errors.read_text()
    assert code == 128 + stop, err
    assert f"stopped by {signal.Signals(stop).name}" in err and "Traceback" not in err
    deadline = time.monotonic() + 5
    while any(map(_alive, family)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in family if _alive(pid)]


# ------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root); the test is skipped where it cannot be mounted."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes free; returns the filler file."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))
    return filler


def _noise(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)  # incompressible, as a PNG is


@pytest.mark.parametrize("leave", [50_000, 200_000])  # room for neither; for the PNG only
def test_a_full_disk_never_replaces_a_good_pair_or_leaves_a_part(small_disk, leave):
    """Before: a rerun on a full disk left a truncated PNG under the final name, beside
    the old run's .npy."""
    from cameras.run.items import ImageResult, ImageTask, RenderedFiles
    from cameras.run.outputs import ImageWriter

    result = ImageResult(ImageTask(0, "photo.jpg", "photo"), None)
    ImageWriter(small_disk, "cameras", []).write(
        result, RenderedFiles(_noise(60_000, 1), _noise(60_000, 2))
    )
    old = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    _fill(small_disk, leave=leave)
    new = RenderedFiles(_noise(150_000, 3), _noise(150_000, 4))
    with pytest.raises(cameras.ImageError, match="photo.jpg: cannot write .*No space left"):
        ImageWriter(small_disk, "cameras", []).write(result, new)
    after = {p.name: p.read_bytes() for p in small_disk.iterdir() if p.name != "filler"}
    assert after == old  # the old pair, whole; no temporary file left


def test_rows_on_a_full_disk_stay_whole_lines(small_disk):
    """Before: an append cut off by a full disk left half a row, and the next record's
    rows were glued to it (a row of nonsense in the middle of results.csv)."""
    from cameras.apps.evaluation.scoring import RESULT_FIELDS
    from cameras.apps.evaluation.storage import ResultStore

    store = ResultStore(small_disk)
    store.start({"run": 1}, resume=False)

    def rows(key: str, count: int) -> list[dict]:
        return [{field: f"{key}-{i}" for field in RESULT_FIELDS[:5]} for i in range(count)]

    store.add("first", rows("first", 2))
    filler = _fill(small_disk, leave=30_000)
    with pytest.raises(OSError):
        store.add("big", rows("big", 4_000))  # ~200 KB of rows: does not fit
    filler.unlink()
    store.add("last", rows("last", 2))
    records = [row["record"] for row in csv.DictReader(store.results.open())]
    assert records == ["first-0", "first-1", "last-0", "last-1"]
    assert store.done_path.read_text().split() == ["first", "last"]


def test_resume_reads_past_a_torn_last_line(tmp_path):
    from cameras.apps.evaluation.storage import ResultStore

    store = ResultStore(tmp_path)
    store.start({"run": 1}, resume=False)
    store.add("a", [{"record": "a", "file": "a.jpg"}])
    with store.done_path.open("ab") as handle:
        handle.write(b"b\n" + "\u00e9".encode()[:1])  # cut mid-character
    with store.results.open("ab") as handle:
        handle.write(b"b,b.jpg,3,tab")
    assert ResultStore(tmp_path).start({"run": 1}, resume=True) == {"a", "b"}
    assert [row["record"] for row in ResultStore(tmp_path).rows()] == ["a"]


# ------------------------------------------------------------- one line for every failure


def _cli(capsys, *argv):
    from cameras.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


GRADCAM = ["--method", "gradcam", "--workers", "0"]


@pytest.fixture
def photo(tmp_path, chelsea) -> Path:
    path = tmp_path / "photos" / "cat.png"
    path.parent.mkdir()
    chelsea.resize((96, 64)).save(path)
    return path


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_a_bad_memory_budget_is_one_line_before_any_work(capsys, monkeypatch, photo, value):
    monkeypatch.setenv("CAMERAS_MEMORY_GB", value)
    code, _, err = _cli(capsys, "explain", photo, "--out", photo.parent / "out", *GRADCAM)
    assert code == 2
    assert err == (
        f"cameras explain: error: CAMERAS_MEMORY_GB={value!r}: expected a positive number of GB\n"
    )


def test_a_fifo_is_not_called_missing(capsys, tmp_path, photo):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, _, err = _cli(capsys, "explain", fifo, photo, "--out", tmp_path / "out", *GRADCAM)
    assert code == 1
    assert f"error: {fifo}: not a regular file (a FIFO)" in err and "no such" not in err
    assert (tmp_path / "out" / "cat_gradcam.png").exists()  # the other input still ran


class TwoPaths(torch.nn.Module):
    """The class score comes from ``used``; ``unused`` runs but feeds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Conv2d(3, 4, 3)
        self.unused = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        self.unused(x)
        return self.head(self.used(x).mean((2, 3)))


def test_a_layer_off_the_path_to_the_score_is_one_clear_line():
    method = cameras.GradCAM(TwoPaths(), layer="unused")
    with pytest.raises(RuntimeError, match="do not depend on layer 'unused'; pick a layer"):
        method(torch.randn(1, 3, 32, 32))


def test_a_channels_last_tensor_says_so():
    method = cameras.GradCAM(TinyNet(), layer="features")
    with pytest.raises(ValueError, match=r"channels last .*x.permute\(0, 3, 1, 2\)"):
        method(torch.randn(1, 40, 48, 3))


def test_an_empty_batch_says_so():
    with pytest.raises(ValueError, match="empty batch"):
        cameras.GradCAM(TinyNet(), layer="features")(torch.zeros(0, 3, 40, 40))


def test_a_fractional_scale_is_refused_and_tiny_inputs_run_each_scale_once():
    with pytest.raises(ValueError, match="whole numbers of pixels, got \\[64.5\\]"):
        cameras.CAMERAS(TinyNet(), layer="features", scales=[64.5])
    assert cameras.default_scales(1) == [1, 2, 3, 4]
    assert cameras.default_scales(224) == [224, 324, 424, 524, 624, 724, 824, 924]


# ------------------------------------------------------------- explain: names, resume, folders


def test_subfolders_are_counted_and_taken_with_recursive(capsys, tmp_path, photo):
    nested = photo.parent / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "dog.png").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "explain", photo.parent, "--out", out, *GRADCAM)
    assert code == 0 and "1 image(s) in subfolders skipped; pass --recursive" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_gradcam.png"]
    code, _, _ = _cli(capsys, "explain", photo.parent, "--out", out, "--recursive", *GRADCAM)
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_gradcam.png", "dog_gradcam.png"]


def test_another_models_run_does_not_replace_outputs_silently(capsys, tmp_path, photo):
    """Before: a second run with another layer wrote cat_gradcam.png over the first."""
    out = tmp_path / "out"
    assert _cli(capsys, "explain", photo, "--out", out, *GRADCAM)[0] == 0
    first = (out / "cat_gradcam.png").read_bytes()
    other = ["--layer", "blocks.5"]
    code, _, err = _cli(capsys, "explain", photo, "--out", out, *other, *GRADCAM)
    assert code == 1 and "pass --overwrite" in err and "layer=blocks.5" not in err
    assert "layer=bn2" in err  # names the run that wrote the file
    assert (out / "cat_gradcam.png").read_bytes() == first
    code, _, _ = _cli(capsys, "explain", photo, "--out", out, *other, "--overwrite", *GRADCAM)
    assert code == 0 and (out / "cat_gradcam.png").read_bytes() != first


def test_resume_skips_complete_outputs_only(capsys, tmp_path, photo):
    (photo.parent / "dog.png").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    assert _cli(capsys, "explain", photo.parent, "--out", out, *GRADCAM)[0] == 0
    (out / "dog_gradcam.npy").unlink()  # dog was not finished
    before = (out / "cat_gradcam.png").stat().st_mtime_ns
    code, stdout, err = _cli(capsys, "explain", photo.parent, "--out", out, "--resume", *GRADCAM)
    assert code == 0 and "--resume: 1 image(s) already done, skipped" in err
    assert "dog.png: top-5" in stdout and "cat.png: top-5" not in stdout
    assert (out / "dog_gradcam.npy").exists()
    assert (out / "cat_gradcam.png").stat().st_mtime_ns == before


# ------------------------------------------------------------- Ray addresses that do not answer


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_a_ray_address_where_nothing_listens_fails_in_one_line_quickly(tmp_path, photo, address):
    """Before: HOST:PORT hung for 300 s and more with no line of ours; ray:// took 37 s."""
    pytest.importorskip("ray")
    argv = [sys.executable, "-m", "cameras", "explain", str(photo), "--out", str(tmp_path)]
    argv += ["--ray", address, "--ray-timeout", "5", "--method", "gradcam"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--ray {address} still waiting after 60 s")
    assert time.monotonic() - start < 30
    assert done.returncode == 2
    assert done.stderr == (
        f"cameras explain: error: --ray {address}: cannot connect (Connection refused); "
        "is the Ray head running there?\n"
    )


# ------------------------------------------------------------- sanity and attack: progress, resume


def _two_photos(folder: Path, chelsea) -> list[Path]:
    folder.mkdir()
    paths = [folder / "a.png", folder / "b.png"]
    chelsea.resize((120, 90)).save(paths[0])
    chelsea.resize((90, 120)).save(paths[1])
    return paths


def test_sanity_shows_progress_off_a_terminal_and_resumes(capsys, tmp_path, chelsea):
    """Before: nothing on screen off a terminal for the whole run; no --resume."""
    a, b = _two_photos(tmp_path / "photos", chelsea)
    out = tmp_path / "out"
    argv = ["sanity", "--methods", "gradcam", "--blocks", "1", "--out", out]
    code, _, err = _cli(capsys, *argv, a)
    assert code == 0
    assert "sanity: image 1/1" in err and "step 2/2 done" in err
    first = (out / "sanity.csv").read_text()
    code, stdout, err = _cli(capsys, *argv, "--resume", a, b)
    assert code == 0 and f"{a}: already in sanity.csv (--resume), skipped" in err
    assert "sanity: image 2/2" in err
    rows = list(csv.DictReader((out / "sanity.csv").open()))
    assert [r["image"] for r in rows] == [str(a), str(b)]
    assert (out / "sanity.csv").read_text().startswith(first)  # a's row kept as it was
    assert "over 2 images" in stdout or "2 images" in stdout


def test_attack_keeps_a_summary_of_what_it_did_and_resumes(capsys, monkeypatch, tmp_path, chelsea):
    """Before: the summary was written only at the end (none after a stop); no --resume."""
    import cameras.cli.attack as attack_cli

    a, b = _two_photos(tmp_path / "photos", chelsea)
    out = tmp_path / "out"
    argv = ["attack", a, b, "--method", "none", "--steps", "2", "--out", out]
    real = attack_cli.attack_one

    def stop_on_b(args, session, method, target, step_size, path, *rest):
        if path == b:
            raise KeyboardInterrupt
        return real(args, session, method, target, step_size, path, *rest)

    monkeypatch.setattr(attack_cli, "attack_one", stop_on_b)
    code, _, err = _cli(capsys, *argv)
    assert code == 130 and "attack: image 1/2" in err
    summary = json.loads((out / "attack_summary.json").read_text())
    assert summary["images"] == 1  # the image done before the stop
    monkeypatch.setattr(attack_cli, "attack_one", real)
    code, _, err = _cli(capsys, *argv, "--resume")
    assert code == 0 and f"{a}: already in attack.jsonl (--resume), skipped" in err
    rows = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    assert [row["file"] for row in rows] == [str(a), str(b)]
    assert json.loads((out / "attack_summary.json").read_text())["images"] == 2


def test_a_duplicated_evaluation_record_is_scored_once_with_one_warning(capsys, tmp_path, photo):
    """Before: a record listed twice was scored twice, silently (it counted twice)."""
    record = {"file": str(photo), "objects": [{"class_index": 285, "boxes": [[0, 0, 60, 40]]}]}
    data = tmp_path / "records.json"
    data.write_text(json.dumps([record, record, record]))
    out = tmp_path / "eval"
    argv = ["evaluate", data, "--methods", "gradcam", "--metrics", "pointing", "--out", out]
    code, _, err = _cli(capsys, *argv, "--workers", "0")
    assert code == 0
    assert err.count("duplicated record") == 1 and "2 duplicated record(s) scored once" in err
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 1


# ------------------------------------------------------------- Keras model files


def test_keras_channels_first_and_truncated_files_are_one_line(capsys, tmp_path, photo):
    """Before: a 46-line traceback from clone_model; a cut-off .keras called "File not found"."""
    keras = pytest.importorskip("keras")
    inputs = keras.Input((3, 32, 32))
    x = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    first = tmp_path / "first.keras"
    keras.Model(inputs, keras.layers.Dense(5)(x)).save(first)
    cut = tmp_path / "cut.keras"
    cut.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    cases = [
        (first, "layer 'conv' is channels_first; cameras takes channels_last Keras models"),
        (cut, f"{cut}: damaged or truncated .keras file (not a complete zip archive)"),
    ]
    for model, message in cases:
        argv = ["explain", photo, "--out", tmp_path / "out", "--model", model]
        code, _, err = _cli(capsys, *argv, "--preprocess", "tf", *GRADCAM)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_web_downloads_on_a_full_disk_keep_the_old_files(small_disk):
    """The web page's files come from viz.save_map. Before: a full disk emptied the PNG
    being replaced (Pillow truncates it, then removes what it wrote)."""
    from cameras.apps.viz import save_map

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8))
    png, npy = small_disk / "map.png", small_disk / "map.npy"
    save_map(small, rng.random((60, 60), dtype=np.float32), png, npy)
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    image = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    _fill(small_disk, leave=120_000)  # less than the noisy overlay's PNG
    with pytest.raises(OSError):
        save_map(image, rng.random((300, 300), dtype=np.float32), png, npy)
    after = {p.name: p.read_bytes() for p in small_disk.iterdir() if p.name != "filler"}
    assert after == before
