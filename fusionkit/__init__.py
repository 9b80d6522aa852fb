"""fusionkit: a workbook for multimodal fusion experiments."""

__version__ = "0.1.0"
