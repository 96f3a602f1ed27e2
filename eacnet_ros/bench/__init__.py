"""Benchmarks of the node's path: every stage of the per-frame pipeline in one process
(``pipeline``) and the node over real DDS in its own process (``dds``)."""
