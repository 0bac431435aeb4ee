"""saelab: a versioned, content-hashed pipeline for sparse autoencoders on LM activations."""

__version__ = "0.1.0"
