"""Annotation of white blood cells: scans, taxonomies, cells, labels, rounds, agreement."""
