"""Inference: the Segmenter (checkpoint -> preprocess -> forward -> mask at input size) and the
Chooser beside it, the engines behind it, export, quantisation and the ``segment`` command."""
