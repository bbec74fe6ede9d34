"""Curation: class maps, frozen data set versions, splits, exports and importers."""
