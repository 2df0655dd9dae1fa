"""Models: what a model means (pre/post-processing) apart from how it runs (``session``)."""
