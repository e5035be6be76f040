"""Priors (SSD's default boxes; torchvision calls them anchors): generation, matching, encoding,
k-means fitting and learnable shapes."""
