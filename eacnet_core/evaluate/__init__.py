"""Evaluation: metrics, ``eacnet eval``, the benchmarks of the model family (speed, FLOPs,
confidence) and the packaging of scored weights."""
