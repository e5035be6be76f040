"""Datasets: annotation readers (records), image datasets, transforms and loaders."""
