"""Stages: each exposes ``run(cfg, out_dir) -> metrics`` and is picked by ``stage=<name>``."""
