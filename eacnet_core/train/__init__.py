"""Training: the run's config and recipes, the loop and its parts (step, run files, attention
statistics, several models at once, distributed, init-from), the campaign, losses, curves, model card."""
