"""Stages: each declares what it needs from the project and what it produces, and runs the library
pieces (preprocess, guidance, scene, render) through the shared engine."""
