"""Training: the config and recipes, the loop and its step, distributed helpers, starting
from other weights, the long campaign, losses, curves and the model card a run writes."""
