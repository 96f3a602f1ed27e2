"""Training: the config and recipes, the loop with its parts, step, run files and attention
statistics, several models on the same batches, distributed helpers, starting from other
weights, the long campaign, losses, curves and the model card a run writes."""
