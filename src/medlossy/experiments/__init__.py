"""The study's experiments, each runnable on its own."""
