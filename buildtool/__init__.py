"""Builds the fleet's container images: model -> render -> plan -> execute -> publish -> report.

See docs/architecture.md for the layers, the data flow of a run, and where a new concern goes.
"""
