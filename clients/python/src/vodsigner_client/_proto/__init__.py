"""Code generated from proto/vodsigner/v1/signer.proto (see clients/python/generate.py)."""
