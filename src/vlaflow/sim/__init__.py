"""Simulation harnesses used to generate demonstrations and evaluate policies.

Submodules import their simulator lazily (install the ``sim`` extra), so importing this package is cheap.
"""
