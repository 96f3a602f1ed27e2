"""Data: the datasets (CamVid, Cityscapes, plain folders with classes.yaml), where they live
(roots: the one data-root rule), their transforms and classes, the label tools, image corruptions."""
