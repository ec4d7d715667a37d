"""Many images through one model: the scale-out engine and the explain and evaluate jobs.

``engine`` streams tasks through load, compute and write (decoding in worker processes,
equal sizes batched from a bounded look-ahead, reports in a thread); ``items`` is the
plain picklable data the jobs pass around; ``batching`` chooses the batch size by device;
``letterbox`` is ``--input-size``; ``outputs`` names output files, refuses to overwrite
inputs and writes every file atomically; ``render`` draws overlays (in a pool of
processes that also write them); ``writing`` is explain's driver side of the files;
``jobs`` assembles the explain and evaluate jobs from those. This package may import
the library (methods, images, budget, session, evaluation, viz) and the standard
library, torch and NumPy; it never imports a face (``cameras.cli``, ``cameras.web``);
Ray only in ``ray.py`` (``cameras.run.ray`` imports it, not the other way round).
Inside the package, ``items``, ``engine``, ``batching`` and ``letterbox`` import nothing
of it; ``outputs`` imports ``items``; ``render`` imports ``items`` and ``outputs``;
``writing`` imports those and ``engine``; ``jobs`` imports all.
``outputs`` (atomic writes, whole-line appends) is also the one writer the rest of the
library uses (``viz``, ``evaluation.storage``, the CLI), so it imports no more than
``images`` and ``items``.
"""
