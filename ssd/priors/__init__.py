"""Priors (SSD's default boxes; torchvision calls them anchors): the resolved prior set
(`generator.PriorSet`), matching, encoding, how a prior set fits a dataset, k-means and coverage
fitting, and the prior-config writer. The model's prior module (fixed or learnable shapes) is
`ssd.modeling.priors`, the learnable priors' warm-up loss `ssd.losses.PriorAids`."""
