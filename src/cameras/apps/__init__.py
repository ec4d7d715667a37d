"""Applications built on a session: ``attack`` (the saliency-focused PGD), ``viz`` (every
picture: overlays, comparison grids, attack and sanity figures, curves), ``datasets``
(annotation readers), ``metrics`` (pointing game, map density, insertion / deletion,
randomisation sanity) and ``evaluation`` (scoring, statistics, resumable storage).

They may import the core, the backends, the methods, the models and the session; never
the scale-out engine (``run``) or a face (``cli``, ``web``): docs/architecture.md.
"""
