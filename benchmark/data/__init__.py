"""Datasets: one module per dataset, each registering a :class:`~benchmark.data.base.DatasetSpec`."""
