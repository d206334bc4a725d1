"""The benchmark's data: typed records, loaders for the official layouts, download, model-output files."""
