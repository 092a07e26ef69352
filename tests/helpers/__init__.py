"""Shared builders for the test suite (tiny bundles, checkpoints, images); a package so its name cannot be taken by an output folder."""
