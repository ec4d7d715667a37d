"""The core: the maths and the PyTorch capture every backend is checked against.

``classes`` (what a user calls a class -> an index), ``images`` (reading photos, resizing
maps), ``capture`` (a layer's output and gradient, hooks scoped to one call and thread),
``tokens`` (a transformer's tokens laid on each scale's grid), ``fusion`` (multi-scale
accumulation and normalisation), ``budget`` (the memory budget), ``targets`` (what a
map explains: a class, a set, a region, a box, a similarity), ``families`` (segmentation
and detection models: their default layer, their input kept at its size) and
``precision`` (autocast for bf16 / fp16). The core imports
nothing else of the package: no backend, method, application or face
(docs/architecture.md; tests/test_architecture.py checks it).
"""
