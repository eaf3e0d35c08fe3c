"""Training pipelines: K-fold timm backbones (and a captions model) -> OOF + test probabilities."""
