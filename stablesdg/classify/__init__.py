"""Downstream defect recognition: classifiers trained on real and generated images."""
