"""Data: the datasets (CamVid, Cityscapes, plain folders with classes.yaml) and the one
data-root rule, their transforms and class tables, the label tools and image corruptions."""
