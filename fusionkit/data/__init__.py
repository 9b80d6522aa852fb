"""Datasets: one loader per family, all producing :class:`fusionkit.data.base.Dataset`."""

from fusionkit.data.base import Dataset, DatasetError, Sample, load_dataset, write_dataset

__all__ = ["Dataset", "DatasetError", "Sample", "load_dataset", "write_dataset"]
